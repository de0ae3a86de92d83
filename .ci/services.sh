#!/usr/bin/env bash
# Install and start PostgreSQL and Redis on loopback for the scale-out test run, as root on a
# fresh Debian machine (nothing is running there). Idempotent: safe to call twice.
#
#   bash .ci/services.sh          # then export what it prints last:
#   RELAYBOX_TEST_DATABASE=postgresql://relaybox:relaybox@127.0.0.1:5432/relaybox
#   RELAYBOX_TEST_QUEUE=redis://127.0.0.1:6379/0
#
# The role may CREATE DATABASE: tests/conftest.py gives every test server its own database
# (and its own Redis db number), so parallel servers never share state by accident.
set -euo pipefail

PG_USER=${PG_USER:-relaybox}
PG_PASSWORD=${PG_PASSWORD:-relaybox}
PG_DB=${PG_DB:-relaybox}
PG_PORT=${PG_PORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}

need=()
command -v pg_ctlcluster >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d-less containers: the packages try to start services; that may fail harmlessly.
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# -- PostgreSQL -------------------------------------------------------------------------------
PG_VERSION=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$PG_VERSION main$"; then
    pg_createcluster "$PG_VERSION" main --port "$PG_PORT" >/dev/null
fi
CONF=/etc/postgresql/$PG_VERSION/main
# Loopback only; fsync off is fine for throwaway test data and much faster.
cat > "$CONF/conf.d/relaybox-ci.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
if ! pg_lsclusters -h | awk -v v="$PG_VERSION" '$1==v && $2=="main" {print $4}' | grep -q online; then
    pg_ctlcluster "$PG_VERSION" main start
fi
for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.5
done
pg_isready -h 127.0.0.1 -p "$PG_PORT"
su postgres -c "psql -q -p $PG_PORT -v ON_ERROR_STOP=1" <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SQL
if ! su postgres -c "psql -p $PG_PORT -tAc \"SELECT 1 FROM pg_database WHERE datname = '$PG_DB'\"" | grep -q 1; then
    su postgres -c "createdb -p $PG_PORT -O $PG_USER $PG_DB"
fi

# -- Redis ------------------------------------------------------------------------------------
if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    mkdir -p /var/lib/redis-relaybox
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save '' --appendonly no \
        --databases 256 --dir /var/lib/redis-relaybox --logfile /var/lib/redis-relaybox/redis.log
    for _ in $(seq 1 60); do
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
        sleep 0.2
    done
fi
redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping

echo "RELAYBOX_TEST_DATABASE=postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
echo "RELAYBOX_TEST_QUEUE=redis://127.0.0.1:$REDIS_PORT/0"
