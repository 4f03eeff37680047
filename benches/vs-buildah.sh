#!/usr/bin/env bash
# Usage: benches/vs-buildah.sh [-n RUNS] [--only layermend|buildah]
#
# Patches the bookworm test fixture with today's bookworm-security updates, RUNS times
# (default 5) with each tool, alternating which tool goes first, and prints the median
# wall time of each, their ratio, and layermend's peak RSS:
#
#   layermend  `layermend patch -i IMAGE -r REPORT -t TAG --repo-mirror ...`
#   buildah    `buildah from` (pulls the image), `buildah run --isolation chroot` of
#              `apt-get update && apt-get install --only-upgrade PACKAGES`, `buildah
#              commit`, `buildah push`. Each run starts from empty buildah storage, so
#              both tools pull the image from the registry.
#
# Both tools read packages from the same loopback HTTP mirror. The mirror is a copy of
# the real archive's signed files: each suite's InRelease and main/binary-amd64/Packages.xz
# (also under by-hash/SHA256/, where apt looks first) and the new .debs at their pool
# paths. The signatures stay valid, so layermend verifies them as usual and apt inside
# the image trusts them with the keyring the image already has: no key is added to the
# image and nothing is marked trusted=yes.
#
# The registry (docker-registry) and the HTTP mirror (python3 http.server) listen on
# 127.0.0.1 only. Needs root. Installs buildah and python3 with apt-get if missing.
# LAYERMEND sets the binary (default: the release build, built if missing).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tests/fixtures/lib.sh
. "$repo/tests/fixtures/lib.sh"

runs=5
only=""
while [ $# -gt 0 ]; do
    case $1 in
        -n) runs=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "-n needs a positive number of runs, got $runs"
case $only in "" | layermend | buildah) ;; *) die "--only takes layermend or buildah, got $only" ;; esac
[ "$(id -u)" -eq 0 ] || die "the benchmark needs root (debootstrap, buildah --isolation chroot)"

missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
[ -x /usr/bin/python3 ] || missing+=(python3)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
require_tools docker-registry skopeo buildah curl gpgv xz jq sha256sum

layermend=${LAYERMEND:-${CARGO_TARGET_DIR:-$repo/target}/release/layermend}
if [ "$only" != buildah ] && [ ! -x "$layermend" ]; then
    (cd "$repo" && cargo build --release --bin layermend) >&2
fi

tmp=$(mktemp -d /var/tmp/layermend-bench.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -d "$tmp/buildah" ]; then
        buildah_cmd rm --all >/dev/null 2>&1 || true
        buildah_cmd rmi --all --force >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

buildah_cmd() {
    buildah --root "$tmp/buildah/root" --runroot "$tmp/buildah/run" "$@"
}

echo "== fixture" >&2
fixture=$("$repo/tests/fixtures/bookworm.sh")
# shellcheck disable=SC1091
. "$fixture/image.env"
"$repo/tests/fixtures/security-report.sh" "$fixture/rootfs" "$tmp/report.json" "$tmp/security"
packages=$(cut -f1 "$tmp/security/updates.tsv" | tr '\n' ' ')
[ -n "$packages" ] || die "no updates in bookworm-security for the fixture today: nothing to measure"

echo "== local mirror" >&2
port_free() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
http_port=$(port_free)
http_base="http://127.0.0.1:$http_port"
# Each mirror keeps the path of its URI, so a prefix mapping of one URI never breaks the
# other (the main archive's URI is often a prefix of the security archive's).
uri_path() {
    local path=${1#*://}
    path=${path#*/}
    echo "${path%/}"
}
main_path=$(uri_path "$MIRROR")
security_path=$(uri_path "$SECURITY_MIRROR")

# Copies SUITE's signed InRelease and its main/binary-amd64 Packages.xz and Packages.gz
# (as a real mirror carries both) from URI into the local tree under PATH, checking the
# signature and the index hashes like apt does.
mirror_suite() {
    local uri=$1 suite=$2 path=$3 dest index expected
    dest="$tmp/mirror/$path/dists/$suite"
    mkdir -p "$dest/main/binary-amd64/by-hash/SHA256"
    curl -fsS --retry 3 -o "$dest/InRelease" "$uri/dists/$suite/InRelease"
    gpgv --quiet --keyring /usr/share/keyrings/debian-archive-keyring.gpg \
        --output "$tmp/Release" "$dest/InRelease" 2>/dev/null ||
        die "invalid signature on $uri/dists/$suite/InRelease"
    for index in main/binary-amd64/Packages.xz main/binary-amd64/Packages.gz; do
        expected=$(awk -v path="$index" '/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 }
            s && $3 == path { print $1; exit }' "$tmp/Release")
        [ -n "$expected" ] || continue
        curl -fsS --retry 3 -o "$dest/$index" "$uri/dists/$suite/$index"
        [ "$(sha256_of "$dest/$index")" = "$expected" ] ||
            die "sha256 mismatch for $uri/dists/$suite/$index"
        cp "$dest/$index" "$dest/main/binary-amd64/by-hash/SHA256/$expected"
    done
    [ -f "$dest/main/binary-amd64/Packages.xz" ] ||
        die "main/binary-amd64/Packages.xz not listed in $suite/InRelease"
}
mirror_suite "$MIRROR" bookworm "$main_path"
mirror_suite "$MIRROR" bookworm-updates "$main_path"
# The security suite's files are the ones the report was derived from.
security_dest="$tmp/mirror/$security_path/dists/bookworm-security"
mkdir -p "$security_dest/main/binary-amd64/by-hash/SHA256"
cp "$tmp/security/InRelease" "$security_dest/InRelease"
cp "$tmp/security/Packages.xz" "$security_dest/main/binary-amd64/Packages.xz"
cp "$tmp/security/Packages.xz" \
    "$security_dest/main/binary-amd64/by-hash/SHA256/$(sha256_of "$tmp/security/Packages.xz")"
while IFS=$'\t' read -r _ _ _ _ filename _; do
    mkdir -p "$tmp/mirror/$security_path/$(dirname "$filename")"
    cp "$tmp/security/debs/${filename##*/}" "$tmp/mirror/$security_path/$filename"
done <"$tmp/security/updates.tsv"

/usr/bin/python3 -m http.server "$http_port" --bind 127.0.0.1 --directory "$tmp/mirror" \
    >"$tmp/http.log" 2>&1 &
pids+=($!)

echo "== registry" >&2
registry_port=$(port_free)
registry="127.0.0.1:$registry_port"
mkdir -p "$tmp/registry"
cat >"$tmp/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $tmp/registry/storage
http:
  addr: $registry
EOF
docker-registry serve "$tmp/registry/config.yml" >"$tmp/registry/log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://$registry/v2/" 2>/dev/null && break
    sleep 0.1
done
curl -fsS -o /dev/null "http://$registry/v2/" || die "registry did not start: $(cat "$tmp/registry/log")"
for _ in $(seq 100); do
    curl -fsS -o /dev/null "$http_base/" 2>/dev/null && break
    sleep 0.1
done
skopeo copy --quiet --dest-tls-verify=false "oci:$fixture/layout:bookworm" \
    "docker://$registry/debian:bookworm"

# Prints seconds since the epoch with nanoseconds.
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

run_layermend() {
    local run=$1 start end
    start=$(now)
    /usr/bin/time -v -o "$tmp/time-layermend-$run" \
        "$layermend" patch -i "$registry/debian:bookworm" -r "$tmp/report.json" \
        -t "layermend-$run" \
        --repo-mirror "$MIRROR=$http_base/$main_path" \
        --repo-mirror "$SECURITY_MIRROR=$http_base/$security_path" \
        >"$tmp/layermend-$run.log" 2>&1 ||
        { cat "$tmp/layermend-$run.log" >&2; die "layermend run $run failed"; }
    end=$(now)
    curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://$registry/v2/debian/manifests/layermend-$run" ||
        die "layermend run $run exited 0 but did not push debian:layermend-$run"
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$tmp/time-layermend-$run")
    echo "$(elapsed "$start" "$end") $rss" >>"$tmp/layermend.times"
    echo "layermend run $run: $(elapsed "$start" "$end") s, peak RSS $rss KiB" >&2
}

run_buildah() {
    local run=$1 start t1 t2 t3 end container
    mkdir -p "$tmp/buildah"

    start=$(now)
    container=$(buildah_cmd from --quiet --tls-verify=false "docker://$registry/debian:bookworm")
    t1=$(now)
    # The image's own apt sources, pointed at the local mirror for the upgrade and put back
    # afterwards, like the mirror mapping layermend gets.
    buildah_cmd run --isolation chroot --network host "$container" -- sh -ec "
        sources=/etc/apt/sources.list.d/debian.sources
        cp \$sources /tmp/debian.sources.orig
        sed -i 's|$SECURITY_MIRROR|$http_base/$security_path|; s|$MIRROR|$http_base/$main_path|' \$sources
        apt-get -q -o Acquire::Languages=none update
        DEBIAN_FRONTEND=noninteractive apt-get -q install -y --only-upgrade \
            -o Dpkg::Options::=--force-confold $packages
        mv /tmp/debian.sources.orig \$sources
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
        dpkg-query -W -f 'installed-version\t\${Package}\t\${Version}\n' $packages
    " >"$tmp/buildah-$run.log" 2>&1 ||
        { cat "$tmp/buildah-$run.log" >&2; die "buildah run $run failed"; }
    t2=$(now)
    buildah_cmd commit --quiet "$container" "localhost/buildah-$run" >/dev/null
    t3=$(now)
    buildah_cmd push --quiet --tls-verify=false "localhost/buildah-$run" \
        "docker://$registry/debian:buildah-$run"
    end=$(now)

    # Every package must have the version the report requests, or the run measured less.
    grep '^installed-version' "$tmp/buildah-$run.log" | cut -f2,3 | sort >"$tmp/buildah-$run.versions"
    cut -f1,3 "$tmp/security/updates.tsv" | sort | diff - "$tmp/buildah-$run.versions" >&2 ||
        die "buildah run $run did not install the versions of the report (diff above)"

    buildah_cmd rm "$container" >/dev/null
    buildah_cmd rmi --all --force >/dev/null
    echo "$(elapsed "$start" "$end") $(elapsed "$start" "$t1") $(elapsed "$t1" "$t2") $(elapsed "$t2" "$t3") $(elapsed "$t3" "$end")" \
        >>"$tmp/buildah.times"
    echo "buildah run $run: $(elapsed "$start" "$end") s (from $(elapsed "$start" "$t1"), run $(elapsed "$t1" "$t2"), commit $(elapsed "$t2" "$t3"), push $(elapsed "$t3" "$end"))" >&2
}

echo "== $runs runs, packages: $packages" >&2
for run in $(seq "$runs"); do
    if [ $((run % 2)) -eq 1 ]; then
        order="layermend buildah"
    else
        order="buildah layermend"
    fi
    for tool in $order; do
        [ -z "$only" ] || [ "$only" = "$tool" ] || continue
        "run_$tool" "$run"
    done
done

# Prints the median of column COLUMN of FILE.
median() {
    sort -n -k"$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END {
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
echo "packages: $(wc -l <"$tmp/security/updates.tsv") ($packages)"
echo "runs: $runs, on $(nproc) cores"
if [ -f "$tmp/layermend.times" ]; then
    echo "layermend median: $(median "$tmp/layermend.times" 1) s, peak RSS median $(median "$tmp/layermend.times" 2) KiB, max $(sort -n -k2 "$tmp/layermend.times" | tail -n1 | cut -d' ' -f2) KiB"
fi
if [ -f "$tmp/buildah.times" ]; then
    echo "buildah median: $(median "$tmp/buildah.times" 1) s (from $(median "$tmp/buildah.times" 2), run $(median "$tmp/buildah.times" 3), commit $(median "$tmp/buildah.times" 4), push $(median "$tmp/buildah.times" 5))"
fi
if [ -f "$tmp/layermend.times" ] && [ -f "$tmp/buildah.times" ]; then
    awk -v b="$(median "$tmp/buildah.times" 1)" -v l="$(median "$tmp/layermend.times" 1)" \
        'BEGIN { printf "ratio buildah / layermend: %.2f\n", b / l }'
fi
