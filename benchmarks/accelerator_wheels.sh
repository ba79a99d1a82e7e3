#!/usr/bin/env bash
# Wheels of what a bare GPU machine without a package registry lacks, into .whl/.
#
# The machine's Python already has jax (CUDA), flax, optax, orbax-checkpoint,
# chex, absl-py, numpy, scikit-learn and matplotlib; the benchmark needs
# ml-collections too (tensorboardX and tensorflow-datasets are imported only
# by training runs and TFDS datasets). Pure-Python wheels: any Python 3 works.
# Then, on the machine, from the repository root (docs/speed.md, "The accelerator run"):
#   python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
#     --target /tmp/site .whl/*.whl . && PYTHONPATH=/tmp/site python3 benchmarks/accelerator.py --out=$OUT
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl ml-collections tensorboardX
ls .whl
