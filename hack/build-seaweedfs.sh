#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (a real S3-compatible object store) from its published Go module into
# .cache/testbed/bin/weed, for the trainer and end-to-end tests. `go install ...@version` is refused because the
# module's go.mod has replace directives, so the module's own source is copied out of the module cache and built
# there. Go's caches make a second run take seconds; an up-to-date binary is kept.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="v0.0.0-20261109003541-7506e5f91cd6"
bin="$root/.cache/testbed/bin"
stamp="$bin/weed.version"
mkdir -p "$bin"
if [ -x "$bin/weed" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
  echo "weed $version is built"; exit 0
fi
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
dir="$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/seaweedfs/seaweedfs@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -n "$dir" ] || { echo "go mod download github.com/seaweedfs/seaweedfs@$version gave no directory" >&2; exit 1; }
src="$root/.cache/testbed/seaweedfs-src"
rm -rf "$src"
cp -r "$dir" "$src"
chmod -R u+w "$src"
(cd "$src" && go build -trimpath -ldflags="-s -w" -o "$bin/weed" ./weed)
rm -rf "$src"
echo "$version" > "$stamp"
"$bin/weed" version
