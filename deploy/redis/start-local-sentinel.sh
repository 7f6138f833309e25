#!/usr/bin/env bash
# A Redis Sentinel group on this machine's loopback, from deploy/redis/sentinel-redis.conf
# and deploy/redis/sentinel.conf: for trying agentcaps with failover, and what
# its tests run against.
#
#   deploy/redis/start-local-sentinel.sh DIR PRIMARY_PORT REPLICA_PORT SENTINEL_PORT1 SENTINEL_PORT2 SENTINEL_PORT3
#
# One primary, one replica, three sentinels (quorum 2) watching the service
# `agentcaps`. DOWN_AFTER_MS (default 5000) and FAILOVER_TIMEOUT_MS (default
# 60000) set how soon a failover starts and how long one may take; the tests use
# 1000 and 5000 so a failover takes a few seconds. Each process lives in
# DIR/PORT: its config copy, data, log, pid file and `start` (its exact command
# line; `sh DIR/PORT/start` brings a killed one back). Returns once the replica
# is in sync and every sentinel knows the replica and the other sentinels. Then:
#
#   export AGENTCAPS_REDIS_URL=redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/agentcaps
#   deploy/redis/stop-local.sh DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=local.sh source-path=SCRIPTDIR
. "$here/local.sh"

(($# == 6)) || die "usage: $0 DIR PRIMARY_PORT REPLICA_PORT SENTINEL_PORT1 SENTINEL_PORT2 SENTINEL_PORT3"
dir=$1 primary=$2 replica=$3
shift 3
down_after=${DOWN_AFTER_MS:-5000}
failover_timeout=${FAILOVER_TIMEOUT_MS:-60000}
mkdir -p "$dir"

start_node "$dir" "$primary" "$here/sentinel-redis.conf" --repl-diskless-sync-delay 0
start_node "$dir" "$replica" "$here/sentinel-redis.conf" --repl-diskless-sync-delay 0 \
    --replicaof 127.0.0.1 "$primary"
until_true 10 "port $primary to answer" answers "$primary"
until_true 10 "port $replica to answer" answers "$replica"
in_sync() { (($(online_replicas "$primary") >= 1)); }
until_true "$LOCAL_WAIT" "the replica to sync" in_sync

# Each sentinel's config: sentinel.conf watching this primary, with these timings.
sed -e "s/^sentinel monitor agentcaps .*/sentinel monitor agentcaps 127.0.0.1 $primary 2/" \
    -e "s/^sentinel down-after-milliseconds agentcaps .*/sentinel down-after-milliseconds agentcaps $down_after/" \
    -e "s/^sentinel failover-timeout agentcaps .*/sentinel failover-timeout agentcaps $failover_timeout/" \
    "$here/sentinel.conf" >"$dir/sentinel.conf"
for port in "$@"; do
    start_node "$dir" "$port" "$dir/sentinel.conf" --sentinel
done

knows_group() {
    # The sentinel on $1 sees the primary up, its replica, and the two other sentinels.
    local state
    state=$("$REDIS_CLI" -p "$1" sentinel master agentcaps | tr -d '\r' | paste -sd' ')
    [[ " $state " == *" num-slaves 1 "* && " $state " == *" num-other-sentinels 2 "* &&
        " $state " != *"s_down"* ]]
}
for port in "$@"; do
    until_true "$LOCAL_WAIT" "sentinel $port to know the group" knows_group "$port"
done
echo "sentinel group ready: redis+sentinel://127.0.0.1:$1,127.0.0.1:$2,127.0.0.1:$3/agentcaps"
