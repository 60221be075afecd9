#!/usr/bin/env bash
# Build a local container image from Debian's own packages (no image registry needed), cached: nothing is done
# when the image already exists. docs/containers.md, "Images".
#
#   tools/build_container_image.sh ffmpeg    -> localhost/tracekit-ffmpeg:bookworm   (ffmpeg; ~1 min, ~250 MB)
#   tools/build_container_image.sh systemd   -> localhost/tracekit-systemd:bookworm  (systemd as PID 1, python3,
#                                               ffmpeg: runs the worker and adapter under systemd-run scopes)
#
# Needs root, podman and debootstrap (Debian: apt-get install -y podman runc debootstrap) and a reachable Debian
# mirror (TRACEKIT_DEBIAN_MIRROR, default http://deb.debian.org/debian). FORCE=1 rebuilds.
set -euo pipefail
kind="${1:?usage: $0 ffmpeg|systemd}"
suite="${TRACEKIT_DEBIAN_SUITE:-bookworm}"
mirror="${TRACEKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
case "$kind" in
  ffmpeg)  include="ffmpeg" ;;
  # python3 of the image = the host's (both bookworm): the bind-mounted repo's .venv runs inside unchanged
  systemd) include="systemd,systemd-sysv,dbus,python3,ffmpeg,procps" ;;
  *) echo "$0: unknown image kind '$kind' (ffmpeg or systemd)" >&2; exit 2 ;;
esac
image="localhost/tracekit-$kind:$suite"
if [ "${FORCE:-0}" != 1 ] && podman image exists "$image"; then
  echo "$image"; exit 0
fi
for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || { echo "$0: $tool not installed (apt-get install -y podman runc debootstrap)" >&2; exit 2; }
done
dir="$(mktemp -d /var/tmp/tracekit-rootfs.XXXXXX)"
trap 'rm -rf "$dir"' EXIT
debootstrap --variant=minbase --include="$include" "$suite" "$dir" "$mirror" >"$dir.log" 2>&1 || {
  tail -n 20 "$dir.log" >&2; rm -f "$dir.log"; exit 1; }
rm -f "$dir.log"
rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
tar -C "$dir" -c . | podman import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "$image"
