#!/usr/bin/env bash
# `make test` with E2E=auto (the default): should `make e2e` run on this machine? Exit 0 = run it; else
# print why not. It needs root (a network namespace, containerd, a kubelet). Under CI (CI=true) it also
# needs a warm machine: cold, the serving and trainer images take ~45 min each to build on 2 cores and
# CoreDNS + the KubeRay operator ~35 min of Go, past CI's 90 minutes. Warm means every e2e image is built
# for this tree or only its code layers change (minutes), and the node's binaries are cached: any machine
# that ran `make e2e` (or `make images` + `python tests/cluster/nodebuild.py`) since the dependencies changed.
# E2E=1 runs `make e2e` whatever this says; E2E=0 never does.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
skip() { echo "make e2e skipped (E2E=auto): $*"; exit 1; }

[ "$(id -u)" = 0 ] || skip "it needs root (network namespace, containerd, kubelet); run make e2e as root"
command -v ip >/dev/null || skip "iproute2's ip is missing (network namespace)"
if [ "${CI:-}" = true ]; then
  node=$("$PY" tests/cluster/nodebuild.py --check) || skip "cold machine, $node (make e2e builds them)"
  plan=$(VERSION=e2e IMAGES="operator serving-cpu trainer" BUILDER=buildah PLAN=1 docs/images.sh 2>&1) \
    || skip "cold machine: $(echo "$plan" | grep -E '^cold|needs' | tr '\n' ';') (make e2e builds them)"
  echo "make e2e runs (E2E=auto, warm machine): $(echo "$plan" | tr '\n' ';')"
fi
exit 0
