#!/usr/bin/env bash
# `make images`: build the four container images with Docker from the repository root.
#   VERSION   image tag (default: the project version in pyproject.toml)
#   REGISTRY  image prefix (default: ghcr.io/bigmodel-operator)
#   IMAGES    which to build (default: "operator serving-cpu serving-vllm trainer")
#   PUSH=1    push after building
# The images cannot be built on the project's CI machines (no Docker, no base images); `make e2e-kind`
# builds them on a machine that has Docker. Pinned dependencies: docs/images/*.lock (docs/images/lock.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
REGISTRY=${REGISTRY:-ghcr.io/bigmodel-operator}
IMAGES=${IMAGES:-operator serving-cpu serving-vllm trainer}
command -v docker >/dev/null || { echo "docker is needed to build the images" >&2; exit 1; }

dockerfile() {
  case "$1" in
    operator) echo operator/Dockerfile ;;
    serving-cpu) echo serving/Dockerfile.cpu ;;
    serving-vllm) echo serving/Dockerfile.vllm ;;
    trainer) echo training/Dockerfile ;;
    *) echo "unknown image $1" >&2; exit 2 ;;
  esac
}

for image in $IMAGES; do
  tag="$REGISTRY/$image:$VERSION"
  start=$(date +%s)
  docker build --file "$(dockerfile "$image")" --tag "$tag" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.source=https://github.com/bigmodel-operator/bigmodel-operator" .
  echo "== built $tag in $(( $(date +%s) - start ))s"
  if [ "${PUSH:-0}" = 1 ]; then docker push "$tag"; fi
done
