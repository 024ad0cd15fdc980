#!/bin/sh
# uv, pinned, for the Dockerfile's RUN steps: `uv.sh pip install ...`, `uv.sh build ...`. uv and its cache live in
# the build cache mounted at /var/cache/bigmodel (pip installs uv there on first use), so no layer carries
# either. Options every image uses: bytecode compiled at install time (as pip did: the pods start without
# compiling, and the trainer's root filesystem is read-only), copies (the cache is another file system), the
# system's CA certificates (the CI machines reach PyPI through a TLS-inspecting proxy).
set -eu
version=0.13.9
cache=/var/cache/bigmodel
export UV_CACHE_DIR="$cache/uv" UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_SYSTEM_CERTS=1
uv="$cache/uv-$version"
if [ ! -x "$uv/bin/uv" ]; then
  rm -rf "$uv.partial"
  python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check --target "$uv.partial" "uv==$version"
  rm -rf "$uv"
  mv "$uv.partial" "$uv"
fi
exec "$uv/bin/uv" "$@"
