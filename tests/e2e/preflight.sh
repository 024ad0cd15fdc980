#!/usr/bin/env bash
# `make test` with E2E=auto (the default): can `make e2e` run on this machine? Exit 0 = run it; else print why
# not. It needs root (a network namespace, containerd, a kubelet) and iproute2's `ip`; cold or warm makes no
# difference: a cold machine builds the images and the node's binaries on the way (measured in
# docs/development.md, inside CI's budget). E2E=1 runs `make e2e` whatever this says; E2E=0 never does.
set -uo pipefail
skip() { echo "make e2e skipped (E2E=auto): $*"; exit 1; }

[ "$(id -u)" = 0 ] || skip "it needs root (network namespace, containerd, kubelet); run make e2e as root"
command -v ip >/dev/null || skip "iproute2's ip is missing (network namespace)"
exit 0
