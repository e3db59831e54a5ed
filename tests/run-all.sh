#!/usr/bin/env bash
# The whole test suite, as README.md gives it: installs the system tools the tests
# need when they are missing (Debian/Ubuntu, as root), then builds and tests.
#
# The example pipelines run Python 3 (standard library only); protoc is vendored
# by a build dependency, and TLS uses ring. The partition tests put members in
# network namespaces (iproute2, iptables); the power-loss test mounts a FUSE
# filesystem (fuse3's fusermount3). Both need root. The deploy test checks the
# systemd units with systemd-analyze; the Compose test builds Ferry's images
# from Debian packages with mmdebstrap and runs them with docker-compose; the
# container tests build their image from a static busybox (busybox-static) and
# need the Docker Engine's socket (they are skipped, saying so, without one).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# The Python SDK's tests run in a virtual environment of their own.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# The static build: a dynamically linked /bin/busybox cannot run in an image.
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
# The web UI's tests drive a headless Chromium through chromedriver over
# WebDriver (tests/src/browser.rs; they are skipped, saying so, without them).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing what the tests need: ${missing[*]}" >&2
  apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The S3 backend's tests run s3s-fs (the s3s project's file-backed S3 server,
# from crates.io; 0.14.1 is the last release our toolchain builds).
if ! command -v s3s-fs >/dev/null 2>&1 && [ -z "${FERRY_S3S_FS:-}" ]; then
  echo "installing s3s-fs for the S3 blob backend's tests" >&2
  CARGO_TARGET_DIR=/tmp/s3s-build cargo install s3s-fs@0.14.1 --features binary --locked
  rm -rf /tmp/s3s-build
fi

# Chromium was installed above: the browser tests must run, not skip.
export FERRY_REQUIRE_BROWSER=1
cargo build --workspace && cargo test --workspace

# The Python SDK (sdk/python), installed with pip into a fresh virtual
# environment from PyPI, tested against the `ferry` just built (its tests
# start a real `ferry dev`).
rm -rf target/sdk-venv
python3 -m venv target/sdk-venv
target/sdk-venv/bin/pip install --quiet --disable-pip-version-check './sdk/python[test]'
FERRY_BIN="$PWD/target/debug/ferry" target/sdk-venv/bin/python -m pytest -q -p no:cacheprovider sdk/python/tests
