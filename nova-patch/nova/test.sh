#!/usr/bin/env bash
# Applies the config-relay patch to the released Nova 34.0.0 and runs its unit tests, and the
# existing Nova test modules the patch touches, against the patched code.
#
#   1. the sdist from PyPI, once, into the cache (its sha256 pinned below and cross-checked
#      against PyPI's JSON API when downloading; re-verified from the cache on every run);
#   2. extracted into a fresh directory, removed afterwards;
#   3. `patch -p1 --dry-run`, then the real thing; any offset, fuzz or reject fails the run;
#   4. a venv with Nova's requirements and test requirements (pinned by constraints.txt), cached
#      under a key that covers those files and the Python version;
#   5. stestr over the selected tests (Nova's tox settings), then a check that the patch's own
#      tests were among those that passed.
#
# Environment: NOVA_PATCH_CACHE (default <workspace>/target/nova-cache), NOVA_PATCH_PYTHON
# (default python3; CPython >= 3.11, as Nova 34 requires), NOVA_PATCH_CONCURRENCY (stestr
# workers, default: the number of CPUs).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workspace=$(cd "$here/../.." && pwd)
cache=${NOVA_PATCH_CACHE:-$workspace/target/nova-cache}
python=${NOVA_PATCH_PYTHON:-python3}
patch_file=$here/0001-libvirt-config-relay-channel.patch
constraints=$here/constraints.txt

version=34.0.0
sdist=nova-$version.tar.gz
sdist_sha256=919eef77cda4ce0cc4746a5853b5d9341ebd0ae37bc8b1939eb77d17727c00df

# The tests to run: the patch's own, the existing modules it changes, and the guest-config
# tests of the driver, whose function the patch extends.
tests='^nova\.tests\.unit\.(virt\.libvirt\.test_config_relay\.|virt\.libvirt\.test_config\.|virt\.libvirt\.test_driver\.LibvirtConnTestCase\.test_get_guest_(config|xml)|objects\.test_objects\.|objects\.test_image_meta\.|notifications\.objects\.test_notification\.|api\.validation\.extra_specs\.)'
# The patch's tests, each of which must have passed (a selection typo must not pass silently).
required_tests=(
  nova.tests.unit.virt.libvirt.test_config_relay.ConfigRelayGuestTestCase.test_add_to_guest
  nova.tests.unit.virt.libvirt.test_config_relay.ConfigRelayKeyTestCase.test_derive_key_vector
  nova.tests.unit.virt.libvirt.test_config_relay.ConfigRelayRequestTestCase.test_flavor_and_image_conflict
  nova.tests.unit.virt.libvirt.test_config.LibvirtConfigGuestSysinfoTest.test_config_oem_strings
  nova.tests.unit.virt.libvirt.test_config.LibvirtConfigGuestChannelTest.test_config_unix_generated_path
  nova.tests.unit.virt.libvirt.test_driver.LibvirtConnTestCase.test_get_guest_config_with_config_relay_through_flavor
  nova.tests.unit.virt.libvirt.test_driver.LibvirtConnTestCase.test_get_guest_config_with_config_relay_through_image_meta
  nova.tests.unit.virt.libvirt.test_driver.LibvirtConnTestCase.test_get_guest_config_without_config_relay
  nova.tests.unit.virt.libvirt.test_driver.LibvirtConnTestCase.test_get_guest_xml_masks_config_relay_key
  nova.tests.unit.objects.test_image_meta.TestImageMetaProps.test_obj_make_compatible_config_relay
  nova.tests.unit.objects.test_objects.TestObjectVersions.test_versions
  nova.tests.unit.notifications.objects.test_notification.TestNotificationObjectVersions.test_versions
)

say() { printf 'nova-test: %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
elapsed() { echo "$((SECONDS - $1))s"; }

for tool in curl tar patch sha256sum flock "$python"; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup.sh installs the prerequisites)"
done
"$python" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' \
  || die "$python is not CPython >= 3.11 with the venv module (Nova 34 requires 3.11)"

mkdir -p "$cache"
# One run at a time per cache: concurrent test processes share the download and the venv.
exec 9>"$cache/lock"
flock 9
# Trees of runs that were killed before their cleanup (none can be running now).
rm -rf "$cache"/run.*

# 1. The sdist.
start=$SECONDS
if [ -f "$cache/$sdist" ] && echo "$sdist_sha256  $cache/$sdist" | sha256sum -c --quiet - 2>/dev/null; then
  say "sdist: cached $cache/$sdist"
else
  rm -f "$cache/$sdist"
  # The release's own page; some PyPI mirrors only serve the project's.
  meta=$(curl -fsL --retry 3 --max-time 120 "https://pypi.org/pypi/nova/$version/json" \
    || curl -fsSL --retry 3 --max-time 120 "https://pypi.org/pypi/nova/json") \
    || die "cannot reach PyPI's JSON API for nova $version"
  read -r url pypi_sha256 < <(
    printf '%s' "$meta" | "$python" -c '
import json, sys, urllib.parse
meta = json.load(sys.stdin)
files = meta.get("urls") if meta["info"]["version"] == sys.argv[1] else None
files = files or meta["releases"][sys.argv[1]]
for f in files:
    if f["filename"] == sys.argv[2]:
        base = "https://pypi.org/pypi/nova/json"
        print(urllib.parse.urljoin(base, f["url"]), f["digests"]["sha256"])
        break
' "$version" "$sdist"
  ) || die "PyPI lists no $sdist"
  [ "$pypi_sha256" = "$sdist_sha256" ] \
    || die "PyPI gives sha256 $pypi_sha256 for $sdist, expected $sdist_sha256"
  say "sdist: downloading $url"
  curl -fsSL --retry 3 --max-time 600 -o "$cache/$sdist.part" "$url" || die "downloading $url"
  echo "$sdist_sha256  $cache/$sdist.part" | sha256sum -c --quiet - \
    || { rm -f "$cache/$sdist.part"; die "$sdist does not have the sha256 PyPI publishes"; }
  mv "$cache/$sdist.part" "$cache/$sdist"
  say "sdist: verified and cached in $(elapsed "$start")"
fi

# 2. A fresh tree.
work=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar -xzf "$cache/$sdist" -C "$work"
src=$work/nova-$version
[ -f "$src/nova/virt/libvirt/driver.py" ] || die "$sdist does not hold nova-$version/"

# 3. The patch, which must apply exactly: no offset, no fuzz, no reject.
dry=$(patch -p1 --dry-run --batch --forward --fuzz=0 -d "$src" <"$patch_file" 2>&1) \
  || die "the patch does not apply to nova $version:"$'\n'"$dry"
if grep -qE '^Hunk|offset|fuzz|reject' <<<"$dry"; then
  die "the patch does not apply cleanly to nova $version:"$'\n'"$dry"
fi
patch -p1 --batch --forward --fuzz=0 --quiet -d "$src" <"$patch_file" || die "applying the patch"
say "patch: $(grep -c '^checking file' <<<"$dry") files, applied cleanly"

# 4. The venv, keyed by everything that decides its contents.
key=$( {
  "$python" -c 'import sys; print(sys.version)'
  cat "$constraints" "$src/requirements.txt" "$src/test-requirements.txt"
} | sha256sum | cut -c1-16)
venv=$cache/venv-$key
# The marker holds the path the venv was built at: its scripts name their interpreter by
# absolute path, so a venv whose cache directory moved is built again.
if [ "$(cat "$venv/.complete" 2>/dev/null)" = "$venv" ]; then
  say "venv: cached $venv"
else
  start=$SECONDS
  rm -rf "$venv"
  say "venv: building $venv (Nova's requirements and test requirements; takes a minute or two)"
  "$python" -m venv "$venv"
  if ! "$venv/bin/python" -m pip install --no-input --disable-pip-version-check \
      --progress-bar off -c "$constraints" \
      -r "$src/requirements.txt" -r "$src/test-requirements.txt" >"$cache/pip.log" 2>&1; then
    tail -n 40 "$cache/pip.log" >&2
    rm -rf "$venv"
    die "installing Nova's Python dependencies (full log: $cache/pip.log)"
  fi
  echo "$venv" >"$venv/.complete"
  # Older venvs are not used again.
  find "$cache" -maxdepth 1 -name 'venv-*' ! -name "venv-$key" -exec rm -rf {} +
  say "venv: built in $(elapsed "$start")"
fi

# 5. The tests, with the settings of Nova's tox environment for unit tests. Nova is imported
# from the patched tree; its egg-info there provides the entry points the tests load.
start=$SECONDS
cd "$src"
export LANGUAGE=en_US LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
  OS_STDOUT_CAPTURE=1 OS_STDERR_CAPTURE=1 OS_TEST_TIMEOUT=160 \
  NOVA_RAISE_ON_GREENLET_LEAK=True OS_NOVA_DISABLE_EVENTLET_PATCHING=False \
  PYTHONPATH=$src
concurrency=${NOVA_PATCH_CONCURRENCY:-$(nproc)}
status=0
"$venv/bin/python" -m stestr --test-path=./nova/tests/unit run --concurrency "$concurrency" \
  "$tests" >"$work/stestr.log" 2>&1 || status=$?
"$venv/bin/python" -m stestr last --subunit >"$work/results.subunit" 2>/dev/null || true
if [ "$status" -ne 0 ]; then
  # The failures with their tracebacks, without the passing tests' noise.
  grep -v '^{' "$work/stestr.log" | tail -n 200 >&2
  die "Nova unit tests (stestr exit $status)"
fi
"$venv/bin/subunit-filter" --no-passthrough --success --no-error --no-failure --no-skip --no-xfail <"$work/results.subunit" \
  | "$venv/bin/subunit-ls" >"$work/passed.txt"
for t in "${required_tests[@]}"; do
  grep -qxF "$t" "$work/passed.txt" || die "$t did not run and pass"
done
say "tests: $(wc -l <"$work/passed.txt") passed in $(elapsed "$start"), \
$(grep -c 'config_relay' "$work/passed.txt") of them the patch's config-relay tests"
