#!/bin/sh
# Runs once, when the PostgreSQL data volume is first initialised (mounted into
# /docker-entrypoint-initdb.d by docker-compose.yml).
#
# One database per service, each owned by a role of its own that can log in to it and to nothing
# else: a service (or whoever takes one over) cannot read or change another service's tables.
# The superuser (POSTGRES_USER) is for the operator only; no service connects as it.
# Passwords: <SERVICE>_DB_PASSWORD (e.g. INVOICING_DB_PASSWORD), default "<service>-local".
# TAHSILAT_DB_PREFIX (tests only) prefixes every role and database name.
set -eu
prefix="${TAHSILAT_DB_PREFIX:-}"
for service in invoicing dunning risk notifier; do
  upper=$(echo "$service" | tr '[:lower:]' '[:upper:]')
  password=$(eval "echo \"\${${upper}_DB_PASSWORD:-${service}-local}\"")
  name="${prefix}${service}"
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres \
       -v name="$name" -v password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE DATABASE :"name" OWNER :"name";
-- Only the owner (and the superuser) may connect; PUBLIC gets nothing.
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
done
