#!/usr/bin/env bash
# `make e2e-kind`: the whole product on a real cluster with real containers (needs Docker, kind, helm and
# kubectl on PATH, and network access to Docker Hub, quay.io, the KubeRay chart repo and PyPI).
# Not runnable on the project's CI machines (no Docker); docs/development.md says why CI uses the
# built-from-source control plane instead.
#
#   1. create a kind cluster (reused if it exists)      4. install KubeRay (its own chart) and this chart
#   2. build the operator, CPU serving and trainer      5. run tests/e2e against it: a CPU BigModel answers a
#      images (docs/images.sh)                             chat completion through a port-forward, a CPU
#   3. load them into kind                                 FineTuneJob succeeds
#
# KIND_CLUSTER (bigmodel-e2e), VERSION (e2e), KUBERAY_VERSION (1.6.0), KEEP=1 keeps the cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${KIND_CLUSTER:-bigmodel-e2e}
export VERSION=${VERSION:-e2e}
REGISTRY=${REGISTRY:-ghcr.io/bigmodel-operator}
KUBERAY_VERSION=${KUBERAY_VERSION:-1.6.0}
PY=${PY:-.venv/bin/python}
for tool in docker kind helm kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e-kind needs $tool on PATH" >&2; exit 1; }
done
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "kind cluster $CLUSTER"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 180s
export KUBECONFIG=${KUBECONFIG_E2E:-$PWD/.cluster/kind-$CLUSTER.kubeconfig}
mkdir -p "$(dirname "$KUBECONFIG")"
kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG"
cleanup() { [ "${KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER"; }
trap cleanup EXIT

step "images $VERSION"
IMAGES="operator serving-cpu trainer" REGISTRY="$REGISTRY" docs/images.sh
for image in operator serving-cpu trainer; do
  kind load docker-image "$REGISTRY/$image:$VERSION" --name "$CLUSTER"
done

step "KubeRay $KUBERAY_VERSION"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  --namespace kuberay-system --create-namespace --wait --timeout 5m

step "bigmodel-operator chart"
helm upgrade --install bigmodel-operator charts/bigmodel-operator \
  --namespace bigmodel-system --create-namespace --wait --timeout 5m \
  --set image.repository="$REGISTRY/operator" --set image.tag="$VERSION" --set image.pullPolicy=Never \
  --set operatorConfig.images.cpu="$REGISTRY/serving-cpu:$VERSION" \
  --set operatorConfig.images.trainer="$REGISTRY/trainer:$VERSION" \
  --set operatorConfig.fetch_hub_config=false

step "tests/e2e"
BIGMODEL_TEST_CLUSTER=existing BIGMODEL_E2E_TRAINER_IMAGE="$REGISTRY/trainer:$VERSION" \
  tests/pytest.sh "$PY" tests/e2e -m e2e -p no:cacheprovider
step "done"
