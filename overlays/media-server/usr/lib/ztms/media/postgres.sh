#!/bin/sh
# Starts PostgreSQL with its cluster on /data/config/postgres. At first
# start it creates the cluster with the superuser password from the
# postgres-password secret. Clients authenticate with SCRAM-SHA-256, and
# the firewall decides which services reach the port at all.
set -eu

bin=/usr/lib/postgresql/15/bin
data=/config/data

if [ ! -s "$data/PG_VERSION" ]; then
    echo "postgres: creating the cluster in $data"
    rm -rf "$data.new"
    "$bin/initdb" -D "$data.new" -U postgres -E UTF8 --locale=C \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
        --pwfile=/run/secrets/postgres-password
    cat >> "$data.new/postgresql.conf" <<CONF
listen_addresses = '*'
unix_socket_directories = '/tmp'
shared_buffers = 32MB
log_destination = 'stderr'
logging_collector = off
CONF
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$data.new/pg_hba.conf"
    mv "$data.new" "$data"
fi

exec "$bin/postgres" -D "$data"
