#!/usr/bin/env bash
# Builds the project's base image from Debian packages: Debian bookworm (minbase) with Python 3.11, venv,
# CA certificates and git, imported as a local image. For machines that reach no image registry (these
# development machines, air-gapped hospital networks): only a Debian package mirror is needed.
#
#   infra/containers/base-image.sh [IMAGE] [MIRROR]
#     IMAGE   default localhost/cmunext-base:bookworm
#     MIRROR  default: the first Debian mirror in /etc/apt/sources.list(.d), else http://deb.debian.org/debian
#
# Needs root (debootstrap), debootstrap and podman (or docker). Does nothing when IMAGE exists (FORCE=1 rebuilds).
set -euo pipefail
IMAGE=${1:-localhost/cmunext-base:bookworm}
ENGINE=${CONTAINER_ENGINE:-$(command -v podman || command -v docker || true)}
[ -n "$ENGINE" ] || { echo "base-image: no container engine (podman or docker) on PATH" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "base-image: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
if [ "${FORCE:-0}" != 1 ] && "$ENGINE" image exists "$IMAGE" 2>/dev/null; then
  echo "base-image: $IMAGE exists (FORCE=1 rebuilds)"; exit 0
fi
MIRROR=${2:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
  | grep -E '^(URIs:|deb )' | grep -oE 'https?://[^ ]+' | grep -v security | head -1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOT=$(mktemp -d /var/tmp/cmunext-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "base-image: debootstrap bookworm from $MIRROR (about 3 minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,git bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 \
  || { tail -20 "$ROOT.log" >&2; echo "base-image: debootstrap failed (log: $ROOT.log)" >&2; exit 1; }
rm -f "$ROOT.log"
# the image needs neither apt's lists nor the package cache
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/archives/*.deb
tar -C "$ROOT" -c . | "$ENGINE" import --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "base-image: built $IMAGE"
