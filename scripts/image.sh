#!/usr/bin/env bash
# `make image`: build the gateway's image with no container daemon and no registry, then start it once and ask
# its /healthz. buildah (vfs storage, chroot isolation: no daemon, no overlay, no user namespaces needed) builds
# the Dockerfile on a local Debian bookworm base that debootstrap makes from a Debian mirror, since no image
# registry may be reachable. Runs as root; installs buildah and debootstrap with apt-get when missing.
# docs/image.md records a run.
set -euo pipefail

IMAGE=${IMAGE:-localhost/llm-gateway:latest}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-python3:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SMOKE_PORT=${SMOKE_PORT:-18080}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"

started=$(date +%s)
say() { echo "image: $*"; }

if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
    say "installing buildah and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null
fi

# buildah 1.28 reads no STORAGE_DRIVER from the environment: every call names the driver. List the result with
# `buildah --storage-driver vfs images`.
buildah() { command buildah --storage-driver "$STORAGE_DRIVER" "$@"; }

# Whatever this script mounts, starts or half-builds is undone on every exit path.
base_ctr='' smoke_ctr='' smoke_root='' gateway_pid=''
cleanup() {
    [ -z "$gateway_pid" ] || { kill "$gateway_pid" 2>/dev/null || true; wait "$gateway_pid" 2>/dev/null || true; }
    if [ -n "$smoke_root" ]; then
        umount "$smoke_root/tmp" 2>/dev/null || true
        umount "$smoke_root" 2>/dev/null || true
        rmdir "$smoke_root"
    fi
    [ -z "$smoke_ctr" ] || buildah rm "$smoke_ctr" >/dev/null
    [ -z "$base_ctr" ] || buildah rm "$base_ctr" >/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The base: Debian bookworm's minimal variant with python3 (3.11) and its venv module, as python:3.11-slim would
# be; ca-certificates because the gateway verifies its upstreams' TLS against the system store.
build_base() {
    base_ctr=$(buildah from scratch)
    rootfs=$(buildah mount "$base_ctr")
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$DEBIAN_MIRROR"
    # an image carries no package lists or downloaded packages
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    buildah umount "$base_ctr" >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd python3 "$base_ctr"
    buildah commit --quiet --rm "$base_ctr" "$BASE_IMAGE" >/dev/null
    base_ctr=''
}
if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base $BASE_IMAGE already built"
else
    say "building base $BASE_IMAGE with debootstrap from $DEBIAN_MIRROR"
    build_base
    say "base built in $(( $(date +%s) - started )) s: $(buildah images --format '{{.Size}}' "$BASE_IMAGE")"
fi

# docker format: the OCI image config has no HEALTHCHECK, so the OCI format would drop it.
say "building $IMAGE"
previous=$(buildah images --quiet --no-trunc "$IMAGE" 2>/dev/null || true)
# pip in the build trusts what this machine trusts (a TLS-intercepting proxy's CA, say).
set -- --format docker --build-arg BASE="$BASE_IMAGE" --tag "$IMAGE" --file Dockerfile
[ ! -s "$CA_BUNDLE" ] || set -- "$@" --secret id=ca,src="$CA_BUNDLE"
buildah bud "$@" .
built=$(date +%s)
# the image this build replaced, now untagged, goes too
if [ -n "$previous" ] && [ "$previous" != "$(buildah images --quiet --no-trunc "$IMAGE")" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true
fi

# The smoke test runs the image's own command, environment, user and working directory on its root filesystem
# mounted read-only, with a tmpfs on /tmp only, as a read-only-root deployment would.
say "starting the image's gateway on 127.0.0.1:$SMOKE_PORT, root filesystem read-only"
smoke_ctr=$(buildah from "$IMAGE")
smoke_root=$(mktemp -d)
mount --bind "$(buildah mount "$smoke_ctr")" "$smoke_root"
mount -o remount,bind,ro "$smoke_root"
mount -t tmpfs -o size=16m tmpfs "$smoke_root/tmp"
field() { buildah inspect --type image --format "$1" "$IMAGE"; }
lines() { field "{{range $1}}{{println .}}{{end}}"; }
mapfile -t image_env < <(lines .OCIv1.Config.Env)
mapfile -t image_cmd < <(lines .OCIv1.Config.Cmd)
mapfile -t health_cmd < <(lines .Docker.Config.Healthcheck.Test | tail -n +2)  # after its CMD marker
user=$(field '{{.OCIv1.Config.User}}') workdir=$(field '{{.OCIv1.Config.WorkingDir}}')
# in_image VAR=value... -- command...: runs command as the image would, with these variables added; replaces the
# calling shell, so call it in a subshell or in the background
in_image() {
    local vars=()
    while [ "$1" != -- ]; do vars+=("$1"); shift; done
    shift
    # shellcheck disable=SC2016  # the image's sh expands them
    exec env -i "${image_env[@]}" "${vars[@]}" chroot --userspec="$user" "$smoke_root" \
        sh -c 'cd "$1" && shift && exec "$@"' sh "$workdir" "$@"
}

# As shipped (0.0.0.0 and the published demo keys) the gateway must refuse to start.
refusal=$( (in_image GATEWAY_PORT="$SMOKE_PORT" -- "${image_cmd[@]}") 2>&1 ) && status=0 || status=$?
case "$status:$refusal" in
    2:*"cannot start"*"demo key"*) say "as shipped it refuses 0.0.0.0 with the demo keys (expected): status 2" ;;
    *) say "FAILED: expected the demo-key refusal (status 2), got status $status: $refusal"; exit 1 ;;
esac

in_image GATEWAY_HOST=127.0.0.1 GATEWAY_PORT="$SMOKE_PORT" -- "${image_cmd[@]}" &
gateway_pid=$!
deadline=$(( $(date +%s) + 120 ))
until health=$(curl -fsS --max-time 2 "http://127.0.0.1:$SMOKE_PORT/healthz" 2>/dev/null); do
    kill -0 "$gateway_pid" 2>/dev/null || { say "FAILED: the gateway exited before answering"; exit 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { say "FAILED: no /healthz answer within 120 s"; exit 1; }
    sleep 1
done
say "GET /healthz -> $health"

if (in_image GATEWAY_PORT="$SMOKE_PORT" -- "${health_cmd[@]}"); then
    say "the image's HEALTHCHECK command, run in the image: healthy"
else
    say "FAILED: the image's HEALTHCHECK command reports unhealthy"; exit 1
fi
say "written to the /tmp tmpfs while serving: $(find "$smoke_root/tmp" -mindepth 1 | wc -l) entries"
say "$(buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE")"
say "base and image built in $((built - started)) s"
