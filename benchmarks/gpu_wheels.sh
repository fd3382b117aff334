#!/usr/bin/env bash
# The wheels benchmarks/gpu_performance.sh installs on a GPU machine that has torch, Lightning, torchmetrics, tiktoken,
# pandas and the Hub client but not Hydra's packages nor pooch (a machine with no internet). Run it where pip works:
#   bash benchmarks/gpu_wheels.sh [FOLDER]    (default .whl; then carry FOLDER to the GPU machine)
set -euo pipefail
cd "$(dirname "$0")/.."
folder=${1:-.whl}
mkdir -p "$folder"
# Pure-Python wheels (any Python 3); antlr4's 4.9.3 (what omegaconf 2.3 pins) is published as a source archive only.
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$folder" \
    hydra-core==1.3.2 omegaconf==2.3.0 pooch platformdirs
python3 -m pip wheel --quiet --no-deps -w "$folder" antlr4-python3-runtime==4.9.3
ls "$folder"
