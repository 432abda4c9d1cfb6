#!/bin/bash
# Run by the postgres image once, when the warehouse database is first created (an empty volume):
# the login BI tools connect with, a member of the read-only role publish grants the BI schemas to
# (crmw_bi_reader, made here if publish has not made it yet). Without BI_DB_PASSWORD it makes none.
set -euo pipefail
if [ -z "${BI_DB_PASSWORD:-}" ]; then
    echo "10-bi-login.sh: BI_DB_PASSWORD is not set; no BI login made (README: Connect a BI tool)"
    exit 0
fi
psql --set ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set bi_user="${BI_DB_USER:-crmw_bi}" --set bi_password="$BI_DB_PASSWORD" <<'SQL'
select not exists (select 1 from pg_roles where rolname = 'crmw_bi_reader') as reader_missing \gset
\if :reader_missing
create role crmw_bi_reader nologin;
\endif
create role :"bi_user" login password :'bi_password' in role crmw_bi_reader;
SQL
