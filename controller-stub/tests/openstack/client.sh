#!/usr/bin/env bash
# Runs the stock OpenStack client (python-openstackclient + openstacksdk + python-neutronclient's
# `openstack sfc ...` plugin) against a controller in noauth mode: scenario.py creates, lists,
# shows, updates and deletes every resource and checks what comes back.
#
# Usage: client.sh ENDPOINT CACHE_DIR
#   ENDPOINT   the controller's API, e.g. http://127.0.0.1:9696
#   CACHE_DIR  where the client's venv is kept (tests/openstack_client.rs passes one under
#              target/). The venv is keyed by the hash of requirements.txt and reused while that
#              file is unchanged; the first run installs from PyPI (about a minute).
# Environment: PYTHON (default python3) is the interpreter the venv is made from.
set -euo pipefail

endpoint=${1:?usage: client.sh ENDPOINT CACHE_DIR}
cache=${2:?usage: client.sh ENDPOINT CACHE_DIR}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}

key=$( (cat "$here/requirements.txt"; "$python" --version) | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
mkdir -p "$cache"

# One builder at a time (test binaries and developers may run this concurrently); a venv is
# used only once its marker says the install finished at this very path (a venv's scripts
# name their interpreter by absolute path, so a moved target directory needs a new one), and
# anything else is rebuilt.
exec 9>"$cache/lock"
flock 9
if [ "$(cat "$venv/.complete" 2>/dev/null)" != "$venv" ]; then
    echo "client.sh: building the OpenStack client venv in $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
        -r "$here/requirements.txt" >&2
    echo "$venv" >"$venv/.complete"
fi
flock -u 9

# A clouds.yaml or OS_* variables of the caller's must not redirect the client.
unset OS_CLOUD OS_AUTH_URL OS_AUTH_TYPE OS_TOKEN OS_ENDPOINT OS_USERNAME OS_PASSWORD \
    OS_PROJECT_NAME OS_PROJECT_ID OS_REGION_NAME
export OS_CLIENT_CONFIG_FILE=/dev/null
exec "$venv/bin/python" "$here/scenario.py" "$endpoint"
