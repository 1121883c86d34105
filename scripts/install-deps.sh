#!/usr/bin/env bash
# Install what nnprec needs on Debian 12 (run as root): compiler, CMake, Open MPI, OpenBLAS,
# HDF5, zlib, the Fashion-MNIST data set, Debian's Python with matplotlib, h5py and
# PyTorch for the plots and reference benchmarks, and Slurm + munge for the batch-script
# test (tests/slurm_requeue.sh runs a real one-node Slurm), and clang with its libFuzzer
# runtime for the fuzz harnesses (scripts/fuzz.sh). Safe to run again: the package scripts
# start no daemon.
#
#   scripts/install-deps.sh          everything (the test suite's needs)
#   scripts/install-deps.sh --demo   only what scripts/demo.sh and the commands it prints
#                                    need: no PyTorch, h5py or Slurm (a much smaller download)
set -euo pipefail
pkgs=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libopenblas-dev
      libhdf5-dev hdf5-tools zlib1g-dev dataset-fashion-mnist
      python3 python3-numpy python3-matplotlib)
case ${1:-} in
  --demo) ;;
  "") pkgs+=(python3-h5py python3-torch slurmctld slurmd slurm-client munge
            clang libclang-rt-14-dev) ;;
  *) echo "install-deps.sh: error: unknown option '$1' (--demo or nothing)" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[deps] all ${#pkgs[@]} packages already installed"
  exit 0
fi
echo "[deps] installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
