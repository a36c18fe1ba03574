#!/usr/bin/env bash
# Build the cached systemd image and OpenRC root ahead of the tests that need
# them; scripts/test-deploy.sh runs this in the background so debootstrap
# overlaps with the quicker tests. Usage: prepare.sh systemd|openrc
# shellcheck source=tests/deploy/lib.sh
. "$(dirname "$0")/lib.sh"
case ${1:-} in
    systemd) ensure_systemd_image ;;
    openrc) ensure_openrc_root ;;
    *) echo "usage: $0 systemd|openrc" >&2; exit 2 ;;
esac
