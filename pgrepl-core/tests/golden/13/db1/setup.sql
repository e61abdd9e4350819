-- replication role replicator
SET synchronous_commit = local; DO $pgrepl$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'replicator') THEN CREATE ROLE "replicator" WITH REPLICATION LOGIN; END IF; END $pgrepl$;
-- password of replicator (a hash; the password itself never reaches the server)
SET synchronous_commit = local; ALTER ROLE "replicator" WITH REPLICATION LOGIN PASSWORD 'SCRAM-SHA-256$4096:GOLDEN-VERIFIER';
-- physical replication slot for db2
SELECT pg_catalog.pg_create_physical_replication_slot('pgrepl_db2') WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = 'pgrepl_db2');
-- physical replication slot for db3
SELECT pg_catalog.pg_create_physical_replication_slot('pgrepl_db3') WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = 'pgrepl_db3');
