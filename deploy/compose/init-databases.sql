-- Runs once, when the PostgreSQL data volume is first initialised
-- (mounted into /docker-entrypoint-initdb.d by docker-compose.yml).
--
-- One database per service: no service may read another's tables, so each gets its own
-- database. They all belong to POSTGRES_USER (tahsilat), the role the services connect as.
-- The migration one-shots (migrate-<service>) create the tables afterwards.

CREATE DATABASE invoicing;
CREATE DATABASE dunning;
CREATE DATABASE risk;
CREATE DATABASE notifier;

-- Only the owner (and superusers) may connect; PUBLIC gets nothing by default.
REVOKE ALL ON DATABASE invoicing FROM PUBLIC;
REVOKE ALL ON DATABASE dunning FROM PUBLIC;
REVOKE ALL ON DATABASE risk FROM PUBLIC;
REVOKE ALL ON DATABASE notifier FROM PUBLIC;
