#!/usr/bin/env bash
# The Debian packages `make e2e` needs (the node: containerd, runc, CNI plugins, iptables for kube-proxy;
# the images: buildah, mmdebstrap, skopeo, umoci). Installs the missing ones; a new machine has none of them.
set -euo pipefail
PACKAGES=(containerd runc containernetworking-plugins iptables buildah mmdebstrap skopeo umoci)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "make e2e needs these Debian packages, and root to install them: ${missing[*]}" >&2
  exit 1
fi
start=$(date +%s)
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "== installed ${missing[*]} in $(( $(date +%s) - start ))s"
