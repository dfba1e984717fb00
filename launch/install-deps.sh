#!/usr/bin/env bash
# Installs zerotrain's build and test dependencies from Debian 12 packages; idempotent, never prompts.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  libopenmpi-dev openmpi-bin
  libhdf5-openmpi-dev hdf5-tools
  libfmt-dev catch2 libopenblas-dev libcli11-dev nlohmann-json3-dev libxxhash-dev libcpptoml-dev
  python3 python3-venv python3-torch python3-h5py python3-matplotlib python3-numpy
  slurm-wlm munge iproute2 procps util-linux clang-format
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
