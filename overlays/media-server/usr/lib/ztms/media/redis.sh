#!/bin/sh
# Starts Redis with its data on /data/config/redis and the password from
# the redis-password secret, written to a configuration file on /tmp so
# that it appears in no command line.
set -eu

password=$(cat /run/secrets/redis-password)
umask 077
printf 'bind 0.0.0.0\nport 6379\nprotected-mode no\ndir /config\nrequirepass %s\n' "$password" > /tmp/redis.conf
exec /usr/bin/redis-server /tmp/redis.conf
