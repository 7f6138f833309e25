#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (as root, from Debian's packages: redis-server, nginx for the forward-auth
# tests, curl and jq for the README's quick start; the dev extras from PyPI),
# then runs pytest. The tests start and stop their own redis-server, nginx
# and agentcaps processes. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# redis-cli: deploy/redis/start-local-{cluster,sentinel}.sh build the Cluster
# and Sentinel groups the integration tests run against.
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
# nginx lives in /usr/sbin, which a non-root PATH may lack.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "scripts/test.sh: please install ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'
exec python3 -m pytest "$@"
