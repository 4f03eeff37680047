#!/usr/bin/env bash
# Runs the main job end to end on this machine: builds a Debian bookworm image with
# debootstrap, pushes it to a `docker-registry` started on a free loopback port, derives a
# Trivy-format report from today's real bookworm-security updates, and patches the image
# with layermend. Needs root on Debian 12 with a Rust toolchain; installs the Debian
# packages it uses. The registry is stopped on exit; the image cache stays under
# /var/tmp/layermend-fixtures.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

[ "$(id -u)" -eq 0 ] || { echo "error: run as root (debootstrap needs it)" >&2; exit 1; }

needed=(docker-registry skopeo debootstrap gpgv curl jq xz-utils)
missing=()
for package in "${needed[@]}"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'ok installed' ||
        missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

echo "building layermend"
cargo build --release --quiet
layermend=${CARGO_TARGET_DIR:-$root/target}/release/layermend

echo "building the bookworm image (cached after the first run)"
fixture=$(tests/fixtures/bookworm.sh)

work=$(mktemp -d)
registry_pid=""
cleanup() {
    [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
log:
  level: error
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do
    curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break
    sleep 0.1
done

image=127.0.0.1:$port/debian:bookworm
skopeo copy -q --dest-tls-verify=false "oci:$fixture/layout:bookworm" "docker://$image"
tests/fixtures/security-report.sh "$fixture/rootfs" "$work/report.json"

echo "patching $image"
status=0
"$layermend" patch -i "$image" -r "$work/report.json" || status=$?
echo "layermend exited with $status"
exit "$status"
