#!/usr/bin/env bash
# `make e2e`: the whole product on a real one-node cluster on this machine, no Docker, no registry.
#
#   1. build the images (docs/images.sh, buildah; cached by content) and the node's binaries and images
#   2. start the node in its own network namespace (tests/cluster/node.py up): control plane, containerd,
#      kubelet, kube-proxy, CoreDNS, hostPath volumes, the real KubeRay operator; import the images
#   3. helm install this chart (our operator image) inside the namespace
#   4. run tests/e2e inside the namespace: a CPU BigModel through KubeRay answers a chat completion via its
#      Service, scaling edits reach the RayCluster, a CPU FineTuneJob trains in the trainer image, and
#      deleting both garbage-collects everything; a FineTuneJob on two pods (Indexed Job, headless Service,
#      gloo over the pod network) succeeds
#
# Image builds (PyPI, Debian) run in the host's namespace; everything that talks to pods or Services runs
# inside the node's namespace, which has no route out. VERSION (e2e), KEEP=1 leaves the node running
# (`python tests/cluster/node.py down` stops it), PYTEST_ARGS adds pytest options, BUILD_IMAGES=0 uses the
# images built last (tagged $VERSION in the OCI layout ~/.cache/bigmodel/images/oci) even if the code changed since;
# E2E_IMAGES="operator serving-cpu" rebuilds only those (the others: as built last); SERVE_PROXY=haproxy|ray is the
# chart's operatorConfig.serve_proxy (default haproxy, the chart's default; Ray's proxy also runs in the integration
# tier's Serve).
set -euo pipefail
cd "$(dirname "$0")/../.."
export VERSION=${VERSION:-e2e}
# The chart's operatorConfig.serve_proxy for the run: haproxy (the default, Ray Serve's HAProxy mode) or ray.
SERVE_PROXY=${SERVE_PROXY:-haproxy}
REGISTRY=${REGISTRY:-ghcr.io/bigmodel-operator}
PY=${PY:-.venv/bin/python}
NODE="$PY tests/cluster/node.py"
CACHE=${BIGMODEL_CACHE_DIR:-$HOME/.cache/bigmodel}
step() { printf '\n== %s (at %ss, %(%T)T)\n' "$1" "$SECONDS" -1; }

step "Debian packages"
tests/e2e/debian_packages.sh

if [ "${BUILD_IMAGES:-1}" = 1 ]; then
  step "images $VERSION (buildah, content-addressed cache)"
  IMAGES="${E2E_IMAGES:-operator serving-cpu trainer}" REGISTRY="$REGISTRY" BUILDER=buildah docs/images.sh
fi

step "helm"
HELM=$($PY -c 'import sys; sys.path.insert(0, "tests/cluster"); import charttools; print(charttools.build_helm())' | tail -1)

step "S3 server (the scale-to-zero step's model store; built here: the netns has no Go module proxy)"
$PY tests/cluster/s3server.py build

step "node up (netns)"
$NODE up
cleanup() { [ "${KEEP:-0}" = 1 ] || $NODE down; }
trap cleanup EXIT
$NODE import "$CACHE/images/oci" "$REGISTRY"/{operator,serving-cpu,trainer}:"$VERSION"

step "bigmodel-operator chart"
# The node has 2 CPUs, and a RayService upgrade runs two RayClusters side by side: small Ray heads (default 2 CPUs,
# 8Gi; with 2Gi, Ray's memory monitor kills the Serve build task that imports vLLM), requesting 250m but limited to
# 2 cores: held to 250m, Serve's import of the application and its proxies' start took ~4 min before an engine could
# be placed, on an idle node (docs/operations.md). Worker pods go 30 s after their
# last engine replica (default 300 s), so the scale-to-zero step sees 0 worker pods soon; a price per CPU-core-hour
# gives that step's status.cost money as well as seconds.
$NODE exec -- "$HELM" upgrade --install bigmodel-operator charts/bigmodel-operator \
  --namespace bigmodel-system --create-namespace --wait --timeout 5m \
  --set image.repository="$REGISTRY/operator" --set image.tag="$VERSION" --set image.pullPolicy=Never \
  --set operatorConfig.images.cpu="$REGISTRY/serving-cpu:$VERSION" \
  --set operatorConfig.images.vllm="$REGISTRY/serving-cpu:$VERSION" \
  --set operatorConfig.images.trainer="$REGISTRY/trainer:$VERSION" \
  --set operatorConfig.fetch_hub_config=false \
  --set operatorConfig.head_cpu=250m --set-string operatorConfig.head_cpu_limit=2 --set operatorConfig.head_memory=4Gi \
  --set operatorConfig.worker_idle_timeout_seconds=30 --set-json operatorConfig.prices.cpu_core_hour=0.04 \
  --set operatorConfig.serve_proxy="$SERVE_PROXY"

KUBECTL=$($PY -c 'import sys; sys.path.insert(0, "tests/cluster"); import clusterbuild; print(clusterbuild.Layout.current().binaries()["kubectl"])')
# A node kept from an earlier run (KEEP=1) may hold an older image under the same tag: restart onto this one.
$NODE exec -- "$KUBECTL" rollout restart -n bigmodel-system deployment/bigmodel-operator
$NODE exec -- "$KUBECTL" rollout status -n bigmodel-system deployment/bigmodel-operator --timeout=180s

step "tests/e2e (inside the netns)"
# shellcheck disable=SC2086
$NODE exec -- env BIGMODEL_TEST_CLUSTER=existing BIGMODEL_E2E_SERVE_PROXY="$SERVE_PROXY" BIGMODEL_KUBECTL="$KUBECTL" BIGMODEL_E2E_DIRECT=1 BIGMODEL_E2E_PRICED=1 \
  BIGMODEL_E2E_TRAINER_IMAGE="$REGISTRY/trainer:$VERSION" \
  tests/pytest.sh "$PY" tests/e2e -m e2e -p no:cacheprovider -s ${PYTEST_ARGS:-}
step "done"
