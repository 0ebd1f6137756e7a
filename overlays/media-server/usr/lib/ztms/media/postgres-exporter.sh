#!/bin/sh
# Starts the PostgreSQL exporter; it reads the password from the
# postgres-password secret file, never from the environment.
set -eu

export DATA_SOURCE_URI="postgres:5432/postgres?sslmode=disable"
export DATA_SOURCE_USER=postgres
export DATA_SOURCE_PASS_FILE=/run/secrets/postgres-password
exec /usr/bin/prometheus-postgres-exporter --web.listen-address=:9187
