#!/usr/bin/env bash
# A Redis Cluster on this machine's loopback, from deploy/redis/cluster.conf:
# for trying agentcaps on a cluster, and what its tests run against.
#
#   deploy/redis/start-local-cluster.sh DIR PORT1 PORT2 PORT3 PORT4 PORT5 PORT6
#
# Three masters and one replica each (CLUSTER_REPLICAS=1; with CLUSTER_REPLICAS=0
# give three ports and mind cluster.conf's min-replicas-to-write). Each node
# lives in DIR/PORT: its config copy, nodes.conf, AOF, log, pid file and
# `start` (its exact command line). Returns once every slot is served, every
# replica is in sync and every node knows every replica. Each node's cluster
# bus listens on PORT + 10000 too, so ports must be at most 55535. Then:
#
#   export AGENTCAPS_REDIS_URL=redis+cluster://127.0.0.1:PORT1,127.0.0.1:PORT2,127.0.0.1:PORT3
#   deploy/redis/stop-local.sh DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=local.sh source-path=SCRIPTDIR
. "$here/local.sh"

(($# >= 2)) || die "usage: $0 DIR PORT..."
dir=$1
shift
replicas=${CLUSTER_REPLICAS:-1}
(($# >= 3 * (replicas + 1))) || die "$((3 * (replicas + 1))) ports needed with CLUSTER_REPLICAS=$replicas"
mkdir -p "$dir"

for port in "$@"; do
    ((port <= 55535)) || die "port $port: cluster ports must be at most 55535 (bus port = port + 10000)"
done

nodes=()
for port in "$@"; do
    # No sync delay: replicas here are ready at once (cluster.conf waits 5 s to batch them).
    start_node "$dir" "$port" "$here/cluster.conf" --repl-diskless-sync-delay 0
    nodes+=("127.0.0.1:$port")
done
for port in "$@"; do
    until_true 10 "port $port to answer" answers "$port"
done

"$REDIS_CLI" --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes \
    >"$dir/create.log" 2>&1 || die "redis-cli --cluster create failed (see $dir/create.log)"

cluster_ok() {
    for port in "$@"; do
        "$REDIS_CLI" -p "$port" cluster info | tr -d '\r' | grep -qx 'cluster_state:ok' || return 1
    done
}
until_true "$LOCAL_WAIT" "every node to see the cluster ok" cluster_ok "$@"

replicas_in_sync() {
    for port in "$@"; do
        if "$REDIS_CLI" -p "$port" role | head -1 | grep -qx master; then
            (($(online_replicas "$port") >= replicas)) || return 1
        fi
    done
}
until_true "$LOCAL_WAIT" "the replicas to sync" replicas_in_sync "$@"

every_node_knows_the_replicas() {
    for port in "$@"; do
        (($("$REDIS_CLI" -p "$port" cluster nodes | grep -c slave || true) >= 3 * replicas)) || return 1
    done
}
until_true "$LOCAL_WAIT" "every node to know every replica" every_node_knows_the_replicas "$@"
echo "cluster ready: redis+cluster://127.0.0.1:$1,127.0.0.1:$2,127.0.0.1:$3"
