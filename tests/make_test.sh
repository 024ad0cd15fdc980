#!/usr/bin/env bash
# `make test` (what CI runs): the unit + integration suites, the controller tier as the chart's ServiceAccount,
# and `make e2e` on the real node, the last one *beside* the suites rather than after them.
#
# Why beside: the e2e waits a lot (image builds and downloads on a cold machine, pods starting, the Ray
# autoscaler's idle timeouts, a scale-to-zero wake) and the suites wait a lot (Ray and vLLM starting, the operator
# reconciling); one after the other left both cores idle for much of an hour (docs/development.md, "CI").
# The two share nothing but the binaries cached under ~/.cache/bigmodel: the suites' control plane listens on
# the host's loopback, the node's lives in its own network namespace, and each Ray is its own cluster.
# The control plane's binaries are built first, so that the two never build the same binary at once.
#
# E2E=auto (default) runs the e2e wherever tests/e2e/preflight.sh says it can run at all, E2E=1 always, E2E=0
# never; E2E_ALONGSIDE=0 runs it after the suites (the old order, e.g. to time each part alone). The controller
# tier runs beside the suites too (below; CONTROLLER_ALONGSIDE=0: after them). The e2e's output
# goes to $E2E_LOG (default .cluster/e2e.log) and is printed when it ends; the status is 0 only if every part
# passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYTEST="tests/pytest.sh $PY"
E2E=${E2E:-auto}
E2E_LOG=${E2E_LOG:-.cluster/e2e.log}
# Each stamp also says how busy the cores were since the last one (/proc/stat): where they sat idle, running more
# beside each other would pay; where they were busy, only less work would.
cpu_ticks() { local _c u n s i w q sq st _rest; read -r _c u n s i w q sq st _rest </proc/stat; echo "$((u + n + s + q + sq + st)) $((i + w))"; }
read -r BUSY0 IDLE0 <<<"$(cpu_ticks)"
read -r BUSY_LAST IDLE_LAST <<<"$BUSY0 $IDLE0"
busy_since() { local b i; read -r b i <<<"$(cpu_ticks)"; echo "$(( (b - $1) * 100 / ((b - $1) + (i - $2) + 1) ))"; }
stamp() {
  printf '\n== %s (at %ss, %(%T)T; cores busy %s%% since the last stamp, %s%% since the start)\n' "$1" "$SECONDS" -1 \
    "$(busy_since "$BUSY_LAST" "$IDLE_LAST")" "$(busy_since "$BUSY0" "$IDLE0")"
  read -r BUSY_LAST IDLE_LAST <<<"$(cpu_ticks)"
}

run_e2e=0
case "$E2E" in
  1) run_e2e=1 ;;
  auto) if tests/e2e/preflight.sh; then run_e2e=1; fi ;;
  *) echo "make e2e skipped (E2E=$E2E)" ;;
esac

stamp "control plane binaries"
$PY tests/cluster/devcluster.py build || exit 1

e2e_pid=""
start_e2e() {
  mkdir -p "$(dirname "$E2E_LOG")"
  stamp "make e2e starts (output: $E2E_LOG)"
  (
    start=$SECONDS
    make --no-print-directory e2e
    status=$?
    echo "== make e2e finished with status $status in $((SECONDS - start))s"
    exit $status
  ) >"$E2E_LOG" 2>&1 &
  e2e_pid=$!
}
finish_e2e() {
  wait "$e2e_pid"
  local status=$?
  stamp "make e2e output ($E2E_LOG)"
  cat "$E2E_LOG"
  return $status
}

if [ "$run_e2e" = 1 ] && [ "${E2E_ALONGSIDE:-1}" = 1 ]; then start_e2e; fi

# The controller tier (the operator as the chart's ServiceAccount) mostly waits for the operator and the apiserver:
# it runs beside the suites, on a control plane of its own ($CONTROLLER_CLUSTER_DIR, another port), because its
# operator watches every namespace and the suites run operators of their own (the loop). CONTROLLER_ALONGSIDE=0
# runs it after the suites on their control plane (the old order). Its output: $CONTROLLER_LOG, printed at the end.
CONTROLLER_CLUSTER_DIR=${CONTROLLER_CLUSTER_DIR:-$PWD/.cluster/controller-tier}
CONTROLLER_LOG=${CONTROLLER_LOG:-.cluster/controller-tier.log}
controller_tier_alone() {
  BIGMODEL_OPERATOR_AS=chart $PYTEST --durations=10 tests/integration/controller
}
controller_tier_beside() {
  local start=$SECONDS status=0
  export BIGMODEL_CLUSTER_DIR=$CONTROLLER_CLUSTER_DIR BIGMODEL_CLUSTER_PORT=${CONTROLLER_CLUSTER_PORT:-16444}
  if $PY tests/cluster/devcluster.py up; then
    KUBECONFIG=$CONTROLLER_CLUSTER_DIR/kubeconfig BIGMODEL_TEST_CLUSTER=existing controller_tier_alone || status=1
  else
    status=1
  fi
  $PY tests/cluster/devcluster.py down || true
  echo "== controller tier finished with status $status in $((SECONDS - start))s"
  return $status
}
controller_pid=""
if [ "${CONTROLLER_ALONGSIDE:-1}" = 1 ]; then
  mkdir -p "$(dirname "$CONTROLLER_LOG")"
  stamp "controller tier as the chart's ServiceAccount starts, beside (output: $CONTROLLER_LOG)"
  controller_tier_beside >"$CONTROLLER_LOG" 2>&1 &
  controller_pid=$!
fi

status=0
stamp "unit + integration"
$PYTEST --durations=25 tests/unit tests/integration --ignore=tests/integration/controller || status=1
if [ -n "$controller_pid" ]; then
  stamp "waiting for the controller tier"
  wait "$controller_pid" || status=1
  stamp "controller tier output ($CONTROLLER_LOG)"
  cat "$CONTROLLER_LOG"
else
  stamp "controller tier as the chart's ServiceAccount"
  controller_tier_alone || status=1
fi

if [ "$run_e2e" = 1 ]; then
  if [ -z "$e2e_pid" ]; then start_e2e; fi
  stamp "waiting for make e2e"
  finish_e2e || status=1
fi
stamp "make test: status $status"
exit $status
