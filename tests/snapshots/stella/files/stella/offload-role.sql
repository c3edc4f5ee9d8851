-- The offload job's own Postgres role: it reads the user's tables (embeddings) in every schema of the
-- database, and writes only into its own schema `offload`. Not a superuser, as the database owner is (the official image makes
-- POSTGRES_USER one): no COPY ... TO PROGRAM, no ALTER SYSTEM, no roles, no dropping others' tables.
--
-- Run by the postgres-setup one-shot as the database owner (PGHOST, PGPORT, PGUSER, PGPASSWORD,
-- PGDATABASE) on every `pulumi up`; every statement is idempotent, and the password is reset each
-- time, so a rotated one takes effect. OFFLOAD_ROLE_VERIFIER is the role's SCRAM-SHA-256 verifier,
-- computed by the Pulumi program: the password itself never reaches this container, and a failed
-- statement in the server's log holds no password.
\set ON_ERROR_STOP on
\getenv verifier OFFLOAD_ROLE_VERIFIER
\getenv dbname PGDATABASE
\if :{?verifier}
\else
DO $$ BEGIN RAISE EXCEPTION 'offload-role.sql: OFFLOAD_ROLE_VERIFIER is not set'; END $$;
\endif
\if :{?dbname}
\else
DO $$ BEGIN RAISE EXCEPTION 'offload-role.sql: PGDATABASE is not set'; END $$;
\endif

SELECT 'CREATE ROLE offload' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'offload') \gexec
ALTER ROLE offload WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'verifier';
GRANT CONNECT ON DATABASE :"dbname" TO offload;
-- Reads the user's tables and views, wherever the user loaded the embeddings: SELECT on every table in
-- every schema that is not the system's, now and (by default privileges) for tables the owner makes
-- later; a schema made later is covered at the next `pulumi up`. Not pg_read_all_data: that role
-- reads the catalogs too, pg_authid's password verifiers included.
REVOKE pg_read_all_data FROM offload;
DO $$
DECLARE
    schema_name name;
BEGIN
    FOR schema_name IN
        SELECT nspname FROM pg_namespace
        WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'offload')
          AND nspname NOT LIKE 'pg\_%'
    LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO offload', schema_name);
        EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO offload', schema_name);
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO offload', schema_name);
    END LOOP;
END $$;
-- Named like the role, so PostgreSQL's default search_path ("$user", public) puts unqualified result
-- tables here, and the job's queries still find the user's tables in public.
CREATE SCHEMA IF NOT EXISTS offload AUTHORIZATION offload;
-- PostgreSQL 15+ already refuses CREATE in public to non-owners; a database made by an older one did not.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
