-- replication role replicator
SET synchronous_commit = local; DO $pgrepl$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'replicator') THEN CREATE ROLE "replicator" WITH REPLICATION LOGIN; END IF; END $pgrepl$;
-- password of replicator (a hash; the password itself never reaches the server)
SET synchronous_commit = local; ALTER ROLE "replicator" WITH REPLICATION LOGIN PASSWORD 'SCRAM-SHA-256$4096:GOLDEN-VERIFIER';
