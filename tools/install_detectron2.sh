#!/usr/bin/env bash
# Install detectron2 into a virtual environment. detectron2 is not on PyPI, so the route is chosen up
# front and never waits on an unreachable host:
#   DETECTRON2_ROUTE=auto          (default) keep a detectron2 that already imports; otherwise "upstream"
#                                  if github.com answers within 3 s, else "pypi-sources"
#   DETECTRON2_ROUTE=upstream      build upstream detectron2 from GitHub (the documented route; needs a
#                                  compiler, builds its C++/CUDA ops)
#   DETECTRON2_ROUTE=pypi-sources  sal-detectron2==0.7.2 from PyPI: upstream detectron2's Python sources at
#                                  commit a59f0563. Its compiled _C targets CPython 3.10 only; elsewhere
#                                  detectron2 falls back to its Python ops, which is all this project uses.
# Usage: tools/install_detectron2.sh VENV_DIR
set -euo pipefail

venv=${1:?usage: $0 VENV_DIR}
py="$venv/bin/python"
route=${DETECTRON2_ROUTE:-auto}

if [ "$route" = auto ]; then
  if "$py" -c "import detectron2" 2>/dev/null; then
    route=keep
  elif timeout 5 "$py" -c "import socket; socket.create_connection(('github.com', 443), timeout=3)" 2>/dev/null; then
    route=upstream
  else
    route=pypi-sources
  fi
fi

case "$route" in
  keep) ;;
  upstream)
    "$py" -m pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
    ;;
  pypi-sources)
    purelib=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    "$py" -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.10 \
      --target "$purelib" --upgrade sal-detectron2==0.7.2
    ;;
  *)
    echo "DETECTRON2_ROUTE must be auto, upstream or pypi-sources (got '$route')" >&2
    exit 2
    ;;
esac

"$py" - "$route" <<'PY'
import sys

import detectron2

how = {
    "keep": "already installed, kept",
    "upstream": "built from github.com/facebookresearch/detectron2",
    "pypi-sources": "sal-detectron2==0.7.2 from PyPI (upstream Python sources, commit a59f0563)",
}[sys.argv[1]]
print(f"detectron2 {detectron2.__version__} at {detectron2.__path__[0]}: {how}")
PY
