#!/usr/bin/env bash
# Builds the Dockerfile's two targets on a machine with no Docker engine (`make images`):
#   localhost/kubetune-operator:dev  and  localhost/kubetune-trainer:dev
# 1. Debian's mmdebstrap, podman and buildah are installed from Debian's packages when missing (as root).
# 2. A Debian bookworm base with Python (what the public python:3.11-slim image carries: the interpreter, venv, CA
#    certificates) is made by mmdebstrap from this machine's own apt sources and imported as
#    localhost/kubetune-base:bookworm, once.
# 3. `podman build --isolation chroot --network host --build-arg BASE=...` runs the Dockerfile, with this machine's
#    pip configuration, CA bundle and pip cache mounted (torch is not downloaded twice). Podman's layer cache makes
#    a second run take seconds when nothing changed.
# The sizes are printed at the end. IMAGE_TAG, BASE_IMAGE and TARGETS override the defaults.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tag="${IMAGE_TAG:-dev}"
base="${BASE_IMAGE:-localhost/kubetune-base:bookworm}"
targets="${TARGETS:-operator trainer}"

missing=()
for tool in mmdebstrap podman buildah; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "build-images: ${missing[*]} missing; install Debian's mmdebstrap podman buildah" >&2; exit 1; }
  echo "build-images: installing ${missing[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap podman buildah uidmap >/dev/null
fi

if [ "$base" = "localhost/kubetune-base:bookworm" ] && ! podman image exists "$base"; then
  sources=""
  for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$candidate" ]; then sources="$candidate"; break; fi
  done
  [ -n "$sources" ] || { echo "build-images: no apt sources on this machine for mmdebstrap" >&2; exit 1; }
  echo "build-images: making $base with mmdebstrap from $sources"
  started=$SECONDS
  mmdebstrap --variant=minbase --quiet \
    --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm - "$sources" | podman import --change 'CMD ["python3"]' - "$base" >/dev/null
  echo "build-images: $base made in $((SECONDS - started)) s"
fi

mounts=()
[ -f /etc/pip.conf ] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
[ -d /etc/ssl/certs ] && mounts+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
cache="${PIP_CACHE_DIR:-${HOME:-/root}/.cache/pip}"
mkdir -p "$cache"
mounts+=(-v "$cache:/var/cache/pip" --build-arg PIP_CACHE=1)
podman image prune -f >/dev/null || true  # what earlier builds left untagged: a trainer layer is GBs
for target in $targets; do
  started=$SECONDS
  podman build --isolation chroot --network host --layers "${mounts[@]}" \
    --build-arg "BASE=$base" --target "$target" -t "localhost/kubetune-$target:$tag" -f "$root/Dockerfile" "$root"
  echo "build-images: localhost/kubetune-$target:$tag built in $((SECONDS - started)) s"
done
podman image prune -f >/dev/null || true
for target in $targets; do
  size="$(podman image inspect --format '{{.Size}}' "localhost/kubetune-$target:$tag")"
  echo "localhost/kubetune-$target:$tag $((size / 1000000)) MB"
done
