-- replication role replicator
SET synchronous_commit = local; DO $pgrepl$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'replicator') THEN CREATE ROLE "replicator" WITH REPLICATION LOGIN; END IF; END $pgrepl$;
-- pg_rewind's functions for replicator
SET synchronous_commit = local; GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO "replicator"; GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO "replicator"; GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO "replicator"; GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO "replicator";
-- password of replicator (a hash; the password itself never reaches the server)
SET synchronous_commit = local; ALTER ROLE "replicator" WITH REPLICATION LOGIN PASSWORD 'SCRAM-SHA-256$4096:GOLDEN-VERIFIER';
-- physical replication slot for db2
SELECT pg_catalog.pg_create_physical_replication_slot('pgrepl_db2') WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = 'pgrepl_db2');
-- physical replication slot for db3
SELECT pg_catalog.pg_create_physical_replication_slot('pgrepl_db3') WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = 'pgrepl_db3');
