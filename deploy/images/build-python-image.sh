#!/usr/bin/env bash
# Builds a Python image for container steps from Debian packages alone, with
# no registry: mmdebstrap makes a minimal Debian root filesystem (apt's own
# sources, deb.debian.org) holding Python 3 and the scientific stack from
# Debian (numpy, scikit-learn), and `docker import` turns it into an image.
#
#   deploy/images/build-python-image.sh [TAG]      # default ferry/python-sklearn:bookworm
#
# Prints the image's ID. Run as root (mmdebstrap's root mode) or with
# unprivileged user namespaces; installs mmdebstrap with apt-get if missing.
# Rebuilding gives a new image ID when any package changed, which is what
# Ferry's cache key holds.
set -euo pipefail

tag="${1:-ferry/python-sklearn:bookworm}"
suite="${FERRY_IMAGE_SUITE:-bookworm}"
packages="python3,python3-numpy,python3-sklearn,ca-certificates"

if ! command -v mmdebstrap >/dev/null 2>&1; then
  echo "installing mmdebstrap" >&2
  apt-get update >&2 && apt-get install -y --no-install-recommends mmdebstrap >&2
fi
command -v docker >/dev/null 2>&1 || { echo "docker is needed to import the image" >&2; exit 1; }

echo "building $tag from Debian $suite: $packages" >&2
# `essential` is the smallest variant (no apt in the image); the packages'
# own dependencies come with them. The tarball goes straight into Docker.
mmdebstrap --variant=essential --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/{doc,man,info,locale}/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  "$suite" - \
  | docker import \
      --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["python3"]' \
      - "$tag" >/dev/null
docker image inspect --format '{{.Id}}' "$tag"
