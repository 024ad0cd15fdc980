#!/usr/bin/env bash
# `make images`: build the container images from their Dockerfiles, from the repository root.
#   VERSION   image tag (default: the project version in pyproject.toml)
#   REGISTRY  image prefix (default: ghcr.io/bigmodel-operator)
#   IMAGES    which to build (default: "operator serving-cpu serving-vllm trainer"; without Docker the
#             default leaves out serving-vllm, which needs the CUDA Ray base)
#   BUILDER   docker or buildah (default: docker when a Docker daemon answers, else buildah)
#   PUSH=1    push after building (docker only)
#   CA_BUNDLE CA certificates the buildah RUN steps trust (default: this machine's bundle)
#   PLAN=1    build nothing (buildah): print each image's state and exit 1 when one needs a cold build
#             (`cached`: its archive for this tree is there; `code`: only our code's layers are rebuilt,
#             seconds to minutes; `cold`: its dependency layers too, ~45 min each on 2 cores)
#
# With buildah (no Docker daemon, no registry: the CI machines) the same Dockerfiles are built with
# `buildah bud --isolation chroot` on a Debian bookworm base made by mmdebstrap (PYTHON_IMAGE build-arg),
# and each image is exported as an OCI archive into a content-addressed cache:
#   ~/.cache/bigmodel/images/<image>-<sha256 of Dockerfile, build context and base>.oci.tar
# An image whose key is already there is not rebuilt; buildah's layer cache (--layers) keeps the big
# pip layers (keyed by the lock files they install) across code changes, and docs/images/thin_export.py
# writes only the new layers (our code, seconds) into <image>-<key>.thin.oci.tar, reusing the compressed
# dependency layers of the last full archive (<image>-<key>.oci.tar, written by `buildah push` when the
# dependencies changed). tests/cluster/node.py imports the archives into the e2e node's containerd.
# The images are built from the working tree, one after the other: build them all in one run so they carry
# the same code. (A copy of the tree as context, `tar` or `git archive`, made buildah miss its cache of the
# lock's COPY and so of the pip layer, a 40-minute reinstall; building in the tree itself keeps it.)
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
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
SUITE=bookworm
BASE_PACKAGES=python3,python3-pip,python-is-python3,ca-certificates,bash

dockerfile() {
  case "$1" in
    operator) echo operator/Dockerfile ;;
    serving-cpu) echo serving/Dockerfile.cpu ;;
    serving-vllm) echo serving/Dockerfile.vllm ;;
    trainer) echo training/Dockerfile ;;
    *) echo "unknown image $1" >&2; exit 2 ;;
  esac
}

labels=(--label "org.opencontainers.image.version=$VERSION"
        --label "org.opencontainers.image.source=https://github.com/bigmodel-operator/bigmodel-operator")

size() { du -sh "$1" | cut -f1; }

# remove_others KEEP FILE...: delete the FILEs that exist, except KEEP.
remove_others() {
  local keep=$1 old
  shift
  for old in "$@"; do
    if [ -f "$old" ] && [ "$old" != "$keep" ]; then rm -f "$old"; fi
  done
}

# What an image's heavy layers depend on: its Dockerfile, the pinned requirements and the base. A build
# leaves <image>-deps-<this>.stamp; while buildah's layer cache still holds that base, a later build with
# the same dependencies only rebuilds our code's layers.
deps_hash() {
  cat "$1" docs/images/*.lock docs/images/*.txt docs/images/serving-cpu.torch-version | sha256sum | cut -c1-16
}

# The build context as the Dockerfiles see it (.dockerignore), hashed file by file.
context_hash() {
  { cat "$1"; find pyproject.toml README.md contract/bigmodel_contract operator/bigmodel_operator serving/bigmodel_serving \
      training/bigmodel_training docs/images -type f ! -path '*/__pycache__/*' -print0 \
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
  if [ "${1:-}" = --name-only ]; then echo "$name"; return; fi
  if [ ! -f "$tar" ]; then
    start=$(date +%s)
    mmdebstrap --quiet --format=tar --variant=minbase --aptopt='APT::Install-Recommends "false"' \
      --include="$BASE_PACKAGES" \
      --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
      "$SUITE" "$tar.partial" >&2
    mv "$tar.partial" "$tar"
    echo "== python base (mmdebstrap $SUITE) in $(( $(date +%s) - start ))s, $(size "$tar")" >&2
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
  docker build --file "$(dockerfile "$image")" --tag "$tag" "${labels[@]}" .
  echo "== built $tag in $(( $(date +%s) - start ))s"
  if [ "${PUSH:-0}" = 1 ]; then docker push "$tag"; fi
}

build_buildah() {
  local image=$1 tag=$2 base=$3 file key out thin stamp start built full=() old
  file=$(dockerfile "$image")
  key=$(printf '%s\n' "$(context_hash "$file")" "$base" "$tag" | sha256sum | cut -c1-16)
  out="$CACHE/$image-$key.oci.tar"
  thin="$CACHE/$image-$key.thin.oci.tar"
  if [ -f "$thin" ]; then out=$thin; fi
  stamp="$CACHE/$image-deps-$(printf '%s\n' "$(deps_hash "$file")" "$base" | sha256sum | cut -c1-16).stamp"
  if [ "${PLAN:-0}" = 1 ]; then
    if [ -f "$out" ]; then echo "cached $image: $out"
    elif [ -f "$stamp" ] && buildah inspect --type image "$base" >/dev/null 2>&1; then echo "code $image"
    else echo "cold $image (no build with these dependencies in buildah's cache)"; cold=1; fi
    return
  fi
  if [ -f "$out" ]; then
    echo "== cached $tag: $out ($(size "$out"))"
  else
    start=$(date +%s)
    # RUN steps see this machine's CA bundle (PyPI behind a TLS-inspecting proxy) without it entering a layer.
    buildah bud --isolation chroot --layers --pull-never --file "$file" --tag "$tag" \
      --volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" \
      --build-arg "PYTHON_IMAGE=$base" "${labels[@]}" .
    built=$(date +%s)
    echo "== buildah bud $tag in $(( built - start ))s"
    for old in "$CACHE/$image"-????????????????.oci.tar; do [ -f "$old" ] && full+=(--reuse "$old"); done
    if [ ${#full[@]} -gt 0 ] && python3 docs/images/thin_export.py "$tag" "$thin" --ref "$tag" "${full[@]}"; then
      out=$thin
      # Thin archives of older code are not needed again (each can carry a few hundred MB of new layers).
      remove_others "$out" "$CACHE/$image"-????????????????.thin.oci.tar
    else
      # zstd: a fraction of gzip's CPU time; containerd 1.6 unpacks it.
      buildah push --quiet --compression-format zstd "$tag" "oci-archive:$out.partial:$tag"
      mv "$out.partial" "$out"
      # Archives of older dependency sets (and the thin archives resting on them) are not needed again.
      remove_others "$out" "$CACHE/$image"-????????????????.oci.tar "$CACHE/$image"-????????????????.thin.oci.tar
    fi
    date -u +%FT%TZ > "$stamp"
    echo "== built $tag in $(( $(date +%s) - start ))s (export $(( $(date +%s) - built ))s): $out ($(size "$out"))"
  fi
  ln -sfn "$(basename "$out")" "$CACHE/$image-$VERSION.oci.tar"
}

case "$BUILDER" in
  docker) ;;
  buildah)
    for tool in buildah mmdebstrap; do
      command -v "$tool" >/dev/null || { echo "BUILDER=buildah needs $tool (apt-get install buildah mmdebstrap)" >&2; exit 1; }
    done
    mkdir -p "$CACHE"
    if [ "${PLAN:-0}" = 1 ]; then base=$(python_base --name-only); else base=$(python_base); fi ;;
  *) echo "BUILDER must be docker or buildah, not $BUILDER" >&2; exit 2 ;;
esac

cold=0
for image in $IMAGES; do
  tag="$REGISTRY/$image:$VERSION"
  if [ "$BUILDER" = docker ]; then build_docker "$image" "$tag"; else build_buildah "$image" "$tag" "$base"; fi
done
exit "$cold"
