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
