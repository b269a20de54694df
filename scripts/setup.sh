#!/usr/bin/env bash
# Set up advbench from nothing: a virtual environment in .venv with the CPU build of torch,
# torchattacks without its stale pins, advbench itself (editable) and, where apt is available
# as root, Debian's Fashion-MNIST package. Safe to re-run; takes a few minutes the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
VENV="${ADVBENCH_VENV:-.venv}"
TORCH_VERSION="${ADVBENCH_TORCH:-2.13.0}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }

# torch first and pinned: a bare or open-ended requirement would fetch a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  pip install -q "torch==$TORCH_VERSION"
fi
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$TORCH_VERSION" >"$constraints"

# advbench with its test, lint and documentation tools and Ray (the optional cluster executor, which
# the tests exercise on a local cluster); the constraint keeps torch where it is.
pip install -q -c "$constraints" -e ".[test,lint,ray,docs]"
# torchattacks declares torchvision and requests~=2.25.1 but imports neither.
pip install -q --no-deps "torchattacks==3.5.1"

# The real Fashion-MNIST, where we may install system packages (optional: the loader also
# reads $ADVBENCH_DATA, a folder given in the suite, or downloads with checksums).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null \
   && [ "$(id -u)" = 0 ] && [ -z "${ADVBENCH_NO_APT:-}" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "setup: could not install dataset-fashion-mnist with apt; Fashion-MNIST suites will look elsewhere" >&2
fi
"$VENV/bin/python" -c "import advbench, torch, torchattacks, foolbox, faiss; print('advbench', advbench.__version__, 'torch', torch.__version__)"
