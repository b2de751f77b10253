#!/usr/bin/env bash
# Build the folder that a GPU machine without network access needs, beside its own Python 3.12, torch and triton,
# to run benchmarks/gpu_report.py (docs/speed.md):
#   DIR/site/     detectron2's Python sources (sal-detectron2==0.7.2 from PyPI; its compiled _C, for CPython
#                 3.10 only, is removed: detectron2 falls back to its Python ops, all this project uses)
#   DIR/wheels/   cp312 manylinux x86-64 wheels of what detectron2 and this project import and such an image
#                 lacks (fvcore, iopath and antlr4 exist only as sources: built here into pure-Python wheels)
# On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/wheels/*.whl
#   PYTHONPATH=/tmp/site:DIR/site python3 benchmarks/gpu_report.py
# Usage: tools/gpu_bundle.sh [DIR]   (default .gpu, which git ignores). Needs PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.gpu}
py=${PYTHON:-.venv/bin/python}

rm -rf "$dir"
mkdir -p "$dir/site" "$dir/wheels"
"$py" -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.10 --target "$dir/site" \
  sal-detectron2==0.7.2
rm -f "$dir"/site/detectron2/_C*.so
rm -rf "$dir"/site/*.dist-info "$dir"/site/bin

"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --dest "$dir/wheels" \
  pycocotools==2.0.11 lvis==0.5.3 yacs==0.1.8 termcolor==3.3.0 omegaconf==2.3.0 hydra-core==1.3.2
"$py" -m pip wheel --quiet --no-deps --wheel-dir "$dir/wheels" \
  fvcore==0.1.5.post20221221 iopath==0.1.10 antlr4-python3-runtime==4.9.3

du -sh "$dir"
ls "$dir/wheels"
