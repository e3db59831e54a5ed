#!/usr/bin/env bash
# Builds Ferry's images with nothing pulled from a registry:
#   ferry/base:bookworm   a minimal Debian root filesystem with Python 3 (for
#                         process steps), made by mmdebstrap from Debian's
#                         packages and imported with `docker import`; built
#                         once and reused (FERRY_REBUILD_BASE=1 rebuilds it);
#   ferry/coordinator     ferry-coordinator and the ferry CLI on that base;
#   ferry/worker          ferry-worker on that base.
#
#   deploy/docker/build.sh [debug|release]    # default release; builds the binaries
#   FERRY_BIN_DIR=target/debug deploy/docker/build.sh   # binaries built already
set -euo pipefail
cd "$(dirname "$0")/../.."

profile="${1:-release}"
if [ -n "${FERRY_BIN_DIR:-}" ]; then
  # Binaries built already (the test suite's): taken as they are.
  bin="$FERRY_BIN_DIR"
else
  case "$profile" in
    release) cargo build --release -p ferry-coordinator -p ferry-worker -p ferry-client ;;
    debug) cargo build -p ferry-coordinator -p ferry-worker -p ferry-client ;;
    *) echo "usage: $0 [debug|release]" >&2; exit 2 ;;
  esac
  bin="target/$profile"
fi

if [ -n "${FERRY_REBUILD_BASE:-}" ] || ! docker image inspect ferry/base:bookworm >/dev/null 2>&1; then
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "installing mmdebstrap" >&2
    apt-get update >&2 && apt-get install -y --no-install-recommends mmdebstrap >&2
  fi
  echo "building ferry/base:bookworm from Debian packages" >&2
  mmdebstrap --variant=essential --include=python3,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/{doc,man,info,locale}/*' \
    bookworm - \
    | docker import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change 'ENV LANG=C.UTF-8' \
        - ferry/base:bookworm >/dev/null
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$bin/ferry-coordinator" "$bin/ferry-worker" "$bin/ferry" deploy/docker/Dockerfile.* "$context/"
docker build --quiet -f "$context/Dockerfile.coordinator" -t ferry/coordinator "$context" >/dev/null
docker build --quiet -f "$context/Dockerfile.worker" -t ferry/worker "$context" >/dev/null
echo "built ferry/coordinator and ferry/worker (binaries of $bin)" >&2
