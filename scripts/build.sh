#!/usr/bin/env bash
# Configure and build nnprec into build/ (Release, warnings as errors) and, with
# --sanitize, a second tree build-asan/ with AddressSanitizer + UBSan.
# usage: scripts/build.sh [--sanitize]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DNNP_WERROR=ON > /dev/null
cmake --build build -j "$jobs"
if [ "${1:-}" = "--sanitize" ]; then
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DNNP_SANITIZE=ON -DNNP_WERROR=ON > /dev/null
  cmake --build build-asan -j "$jobs"
fi
