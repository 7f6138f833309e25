#!/usr/bin/env bash
# Stops every redis-server and sentinel that start-local-cluster.sh or
# start-local-sentinel.sh started in DIR (by the pid files in DIR/*/redis.pid).
#
#   deploy/redis/stop-local.sh DIR
set -uo pipefail
dir=${1:?usage: $0 DIR}
pids=()
for file in "$dir"/*/redis.pid; do
    [ -f "$file" ] || continue
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
done
for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || exit 0
    sleep 0.1
done
for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
exit 0
