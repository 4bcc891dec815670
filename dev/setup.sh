#!/usr/bin/env bash
# Create .venv and install refine with its test tools into it.
# PyTorch goes in first, as the pinned CPU build, when the environment has none: a bare
# `torch` requirement would otherwise pull a multi-GB CUDA build. An environment that already
# has torch (a CUDA build, say) keeps it; refine only asks for torch>=2.2.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
# timm (refine[timm]) imports torchvision, which must be the build made for this torch: torch
# pinned to the installed version makes pip pick that torchvision and never replace torch.
# Where the one it finds does not load (PyPI's CUDA torchvision beside a CPU torch) it comes out
# again, since transformers would import it and fail, and tests/test_timm_model.py skips.
# (The distribution's version: torch.__version__ may carry a +cu130 that pip does not know.)
torch_version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('torch'))")
if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[timm]" \
  "torch==$torch_version"; then
  echo "dev/setup.sh: no torchvision for torch $torch_version; the timm tests will skip" >&2
elif ! .venv/bin/python -c "import timm" 2>/dev/null; then
  echo "dev/setup.sh: timm does not import beside torch $torch_version (its torchvision is" \
    "built for another torch); removing timm and torchvision, the timm tests will skip" >&2
  .venv/bin/python -m pip uninstall --quiet --disable-pip-version-check -y timm torchvision
fi
