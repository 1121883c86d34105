#!/usr/bin/env bash
# The main job: install dependencies, build, and train LeNet on Fashion-MNIST with two MPI
# ranks for 2 epochs (a few minutes on two cores). Results go to results/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --demo   # no PyTorch or Slurm: those are for the tests
bash scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p results
# nnprec does not start a fresh run in a folder that holds another run's checkpoints:
# the demo replaces its own earlier output
if [ -e results/demo ]; then
  echo "[demo] replacing results/demo (an earlier demo's output)"
  rm -rf results/demo
fi
mpirun -np 2 --bind-to core ./build/nnprec train --model lenet --epochs 2 --batch 32 \
  --lr 0.01 --momentum 0.9 --eval-every 500 --out results/demo "$@"
echo "[demo] wrote results/demo/{train,eval,timing,ranks}.csv, options.txt and its checkpoints"
cat <<'NEXT'
[demo] next: the same run with the seed's initialization and the dynamic preconditioner,
[demo] then both compared (test accuracy and training loss; a table and results/compare.png):
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  mpirun -np 2 --bind-to core build/nnprec train --config results/demo/options.txt \
      --out results/demo-precond --init seed --precond dynamic --precond-formula seed
  scripts/compare.py results/demo results/demo-precond
NEXT
