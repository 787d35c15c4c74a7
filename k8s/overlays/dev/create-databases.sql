-- One PostgreSQL server, one database per service (database-per-service):
-- auth, orders and catalog never read each other's tables. Each service
-- creates its own tables by running its migrations at startup; this script
-- only makes sure the empty databases exist.
--
-- Idempotent (safe to run again): CREATE DATABASE has no IF NOT EXISTS, so
-- the statement is only generated for missing databases and run by psql's
-- \gexec. Used by the postgres container's /docker-entrypoint-initdb.d (first
-- start of an empty data volume), by scripts/services, and, as a copy, by the
-- Kubernetes dev overlay (k8s/overlays/dev/create-databases.sql; kustomize
-- cannot read files outside its folder, scripts/validate-deploy checks that
-- the two stay identical).
SELECT format('CREATE DATABASE %I', name)
FROM unnest(ARRAY['auth', 'orders', 'catalog']) AS name
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = name)
\gexec
