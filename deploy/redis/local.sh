# shellcheck shell=bash
# Shared by start-local-cluster.sh and start-local-sentinel.sh (sourced, not run).

REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
LOCAL_WAIT=${LOCAL_WAIT:-30}  # seconds to wait for each step

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# start_node DIR PORT CONFIG [OPTION...]: a daemonized redis-server (or sentinel,
# with --sentinel among the options) on 127.0.0.1:PORT, living in DIR/PORT with
# its own copy of CONFIG (Redis and Sentinel rewrite their config file). The
# exact command is kept in DIR/PORT/start, so `sh DIR/PORT/start` restarts it.
start_node() {
    local dir=$1 port=$2 config=$3
    shift 3
    local node="$dir/$port"
    mkdir -p "$node"
    cp "$config" "$node/redis.conf"
    {
        printf 'exec %q %q' "$REDIS_SERVER" "$node/redis.conf"
        printf ' %q' "$@" --port "$port" --bind 127.0.0.1 --dir "$node" \
            --daemonize yes --pidfile "$node/redis.pid" --logfile "$node/redis.log"
        printf '\n'
    } >"$node/start"
    sh "$node/start" || die "redis-server on port $port did not start (see $node/redis.log)"
}

# until_true SECONDS WHAT COMMAND...: run COMMAND every 0.1 s until it succeeds.
until_true() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out waiting for $what"
        sleep 0.1
    done
}

answers() { [ "$("$REDIS_CLI" -p "$1" ping 2>/dev/null)" = PONG ]; }

# online_replicas PORT: how many replicas the server on PORT streams to.
online_replicas() {
    "$REDIS_CLI" -p "$1" info replication | tr -d '\r' | grep -c 'state=online' || true
}
