#!/usr/bin/env bash
# `make images`: build the container images, the targets of ./Dockerfile, from the repository root.
#   VERSION   image tag (default: the project version in pyproject.toml)
#   REGISTRY  image prefix (default: ghcr.io/bigmodel-operator)
#   IMAGES    which to build (default: "operator serving-cpu serving-vllm trainer"; without Docker the
#             default leaves out serving-vllm, which needs the CUDA Ray base)
#   BUILDER   docker or buildah (default: docker when a Docker daemon answers, else buildah)
#   PUSH=1    push after building (docker only)
#   CA_BUNDLE CA certificates the buildah RUN steps trust (default: this machine's bundle)
#
# With buildah (no Docker daemon, no registry: the CI machines) the Dockerfile is built with
# `buildah bud --isolation chroot --layers` on a Debian bookworm base made by mmdebstrap (PYTHON_IMAGE
# build-arg), and each image is copied by skopeo into one OCI image layout, the image cache:
#   ~/.cache/bigmodel/images/oci   $REGISTRY/<image>:<key>       key: sha256 of the Dockerfile, .dockerignore,
#                                                                 the build context, the base and the tag
#                                  $REGISTRY/<image>:$VERSION    the same image: the one built last
# An image whose key is in the layout is not rebuilt. Layers are stored uncompressed and once: skopeo skips
# the blobs the layout already has, so a code change writes only our code's layers (MBs), and serving-cpu and
# trainer share their biggest layer (docs/images/shared.lock); older builds are dropped (docs/images/layout.py).
# tests/cluster/node.py imports from the layout only the blobs the e2e node's containerd lacks.
# buildah's layer cache (--layers) and uv's build cache (a RUN cache mount) make a rebuild after a code or
# lock change redo only what changed. Build every image from one tree state, in one run, so that they carry
# the same code.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
REGISTRY=${REGISTRY:-ghcr.io/bigmodel-operator}
if [ -z "${BUILDER:-}" ]; then
  if docker info >/dev/null 2>&1; then BUILDER=docker; else BUILDER=buildah; fi
fi
if [ "$BUILDER" = docker ]; then
  IMAGES=${IMAGES:-operator serving-cpu serving-vllm trainer}
else
  IMAGES=${IMAGES:-operator serving-cpu trainer}
fi
CACHE=${BIGMODEL_IMAGE_CACHE:-${BIGMODEL_CACHE_DIR:-$HOME/.cache/bigmodel}/images}
LAYOUT=$CACHE/oci
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
SUITE=bookworm
BASE_PACKAGES=python3,python3-pip,python-is-python3,ca-certificates,bash

for image in $IMAGES; do
  case "$image" in
    operator | serving-cpu | serving-vllm | trainer) ;;
    *) echo "unknown image $image (targets of the Dockerfile: operator serving-cpu serving-vllm trainer)" >&2
       exit 2 ;;
  esac
done

labels=(--label "org.opencontainers.image.version=$VERSION"
        --label "org.opencontainers.image.source=https://github.com/bigmodel-operator/bigmodel-operator")

# The build context as the Dockerfile sees it (.dockerignore lets through no more than these), file by file.
context_hash() {
  { cat Dockerfile .dockerignore; find pyproject.toml README.md contract/bigmodel_contract operator/bigmodel_operator serving/bigmodel_serving \
      training/bigmodel_training docs/images -type f -name '*' ! -path '*/__pycache__/*' -print0 \
      | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16
}

# A Debian base with Python 3.11 and pip (the python:slim equivalent), made by mmdebstrap, imported into
# buildah's storage as localhost/bigmodel/python-base:<key>. Prints the image name.
python_base() {
  local key tar name ctr mnt start
  key=$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" minbase no-recommends externally-managed-removed \
        | sha256sum | cut -c1-16)
  tar="$CACHE/python-base-$key.tar"
  name="localhost/bigmodel/python-base:$key"
  if [ ! -f "$tar" ]; then
    start=$(date +%s)
    mmdebstrap --quiet --format=tar --variant=minbase --aptopt='APT::Install-Recommends "false"' \
      --include="$BASE_PACKAGES" \
      --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
      "$SUITE" "$tar.partial" >&2
    mv "$tar.partial" "$tar"
    echo "== python base (mmdebstrap $SUITE) in $(( $(date +%s) - start ))s, $(du -sh "$tar" | cut -f1)" >&2
  fi
  if ! buildah inspect --type image "$name" >/dev/null 2>&1; then
    ctr=$(buildah from --quiet scratch)
    mnt=$(buildah mount "$ctr")
    tar -xf "$tar" -C "$mnt" --exclude='./dev/*'
    buildah umount "$ctr" >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 --cmd python3 "$ctr"
    buildah commit --quiet --rm "$ctr" "$name" >/dev/null
  fi
  echo "$name"
}

build_docker() {
  local image=$1 tag=$2 start
  start=$(date +%s)
  docker build --target "$image" --tag "$tag" "${labels[@]}" .
  echo "== built $tag in $(( $(date +%s) - start ))s"
  if [ "${PUSH:-0}" = 1 ]; then docker push "$tag"; fi
}

# Each line of the build's output with the time of day, so that a slow step shows in the log.
stamp() { while IFS= read -r line; do printf '%(%T)T %s\n' -1 "$line"; done; }

build_buildah() {
  local image=$1 tag=$2 base=$3 key ref start built
  key=$(printf '%s\n' "$(context_hash)" "$base" "$tag" | sha256sum | cut -c1-16)
  ref="${tag%:*}:$key"
  if python3 docs/images/layout.py has "$LAYOUT" "$ref"; then
    echo "== cached $tag: $ref in $LAYOUT"
  else
    start=$(date +%s)
    # RUN steps see this machine's CA bundle (PyPI behind a TLS-inspecting proxy) without it entering a layer.
    buildah bud --isolation chroot --layers --pull-never --target "$image" --tag "$tag" \
      --volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" \
      --build-arg "PYTHON_IMAGE=$base" "${labels[@]}" . 2>&1 | stamp
    built=$(date +%s)
    # Uncompressed, so each layer's blob is named by its diff_id and skopeo skips the blobs already there.
    skopeo copy --quiet --dest-oci-accept-uncompressed-layers "containers-storage:$tag" "oci:$LAYOUT:$ref"
    echo "== built $tag in $(( built - start ))s, copied into the layout in $(( $(date +%s) - built ))s"
  fi
  kept+=("$ref=$tag")
}

case "$BUILDER" in
  docker) ;;
  buildah)
    for tool in buildah mmdebstrap skopeo; do
      command -v "$tool" >/dev/null || { echo "BUILDER=buildah needs $tool (see tests/e2e/debian_packages.sh)" >&2
                                         exit 1; }
    done
    mkdir -p "$CACHE"
    base=$(python_base) ;;
  *) echo "BUILDER must be docker or buildah, not $BUILDER" >&2; exit 2 ;;
esac

kept=()
for image in $IMAGES; do
  tag="$REGISTRY/$image:$VERSION"
  if [ "$BUILDER" = docker ]; then build_docker "$image" "$tag"; else build_buildah "$image" "$tag" "$base"; fi
done
if [ "$BUILDER" = buildah ]; then
  # Tag each build $VERSION; older builds of these images are not needed again (a dependency change leaves GBs).
  python3 docs/images/layout.py keep "$LAYOUT" "${kept[@]}"
  echo "== image layout $LAYOUT: $(du -sh "$LAYOUT" | cut -f1)"
fi
