"""What the stages write: the projector (pretrain) and a complete HF Llava directory (finetune).

Both are built in a temporary directory and moved into the stage directory only when complete;
`train_result.json` is written last and marks the stage as finished.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import PretrainedConfig

from firellava.core.io import read_json, write_json
from firellava.core.model_card import CARD_DATA_FILE, write_model_card

PROJECTOR_FILE = "projector.safetensors"
RESULT_FILE = "train_result.json"
TRAINER_STATE = "trainer_state.json"  # HF TrainerState of the finished run: log_history is the loss curve
PROJECTOR_PREFIX = "model.multi_modal_projector."
# transformers 5 flattens CLIPVisionModel (no `vision_model.` level) and saves the tower's weights that way; the
# published llava-hf layout, which vLLM's loader requires, keeps the level, and transformers loads either.
VISION_SAVED = "vision_tower."
VISION_PUBLISHED = "vision_tower.vision_model."


def group_of(name: str) -> str:
    """Which part of LlavaForConditionalGeneration a parameter belongs to."""
    if name.startswith("model.vision_tower.") or name.startswith("vision_tower."):
        return "vision_tower"
    if name.startswith(PROJECTOR_PREFIX) or name.startswith("multi_modal_projector."):
        return "projector"
    return "llm"  # language_model.* and lm_head.*


def projector_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`linear_1.weight`, ... of the projector, from a full model state dict."""
    out = {k[len(PROJECTOR_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(PROJECTOR_PREFIX)}
    if not out:
        raise ValueError("the state dict holds no multi_modal_projector weights")
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def load_projector(model: Any, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained projector not found (run the pretrain stage first)")
    state = load_file(str(path))
    try:
        model.model.multi_modal_projector.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: projector does not fit the model built from cfg.model: {e}") from e


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move every finished file of `tmp` into `out_dir` (replacing older ones of the same name)."""
    for item in tmp.iterdir():
        target = out_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)


def write_outputs(out_dir: str | Path, write: Any, result: Mapping[str, Any]) -> Path:
    """Call `write(tmp_dir)`, move its files into `out_dir`, then write the result marker."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export.", suffix=".partial", dir=out))
    try:
        write(tmp)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(out / RESULT_FILE, dict(result))
    return out


def save_projector(tmp: Path, state_dict: Mapping[str, torch.Tensor], model: Any) -> None:
    save_file(projector_state(state_dict), str(tmp / PROJECTOR_FILE), metadata={"format": "pt"})
    model.config.save_pretrained(tmp)


def set_use_cache(model: Any, on: bool) -> None:
    """`use_cache` on the config of the model, its sub-configs and every sub-model.

    Each sub-model reads its own config (the language model a copy of the text config, not the object LLaVA's
    config holds), and the Trainer passes no use_cache. A cache during training is not only waste: transformers
    looks for packed rows (positions restarting) only when there is no cache, so with one a packed row gets a
    plain causal mask and every sample attends to the samples before it in the row.
    """
    configs = [model.config, *(getattr(model.config, name, None) for name in model.config.sub_configs)]
    configs += [m.config for m in model.modules() if isinstance(getattr(m, "config", None), PretrainedConfig)]
    model.config.use_cache = on
    for config in configs:
        if hasattr(config, "use_cache"):  # a vision config has none to set
            config.use_cache = on


def save_model_dir(tmp: Path, state_dict: Mapping[str, torch.Tensor], model: Any, processor: Any) -> None:
    """The HF directory: gathered weights, config, generation config, processor, tokenizer and chat template."""
    set_use_cache(model, True)  # for inference from the directory
    model.save_pretrained(tmp, state_dict=dict(state_dict))
    published_vision_names(tmp)
    processor.save_pretrained(tmp)


def save_card(tmp: Path, card: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    """The model card (README.md) and its facts (model_card.json), with this training run added."""
    training = {k: result.get(k) for k in ("steps", "final_loss", "zero_stage", "train_seconds")}
    training["device"] = result.get("runtime", {}).get("device")
    card = {**card, "training": training}
    write_json(tmp / CARD_DATA_FILE, card)
    write_model_card(tmp, card)


def published_name(name: str) -> str:
    """A saved weight's name in the llava-hf layout (`vision_tower.vision_model.*`); others are unchanged."""
    if name.startswith(VISION_SAVED) and not name.startswith(VISION_PUBLISHED):
        return VISION_PUBLISHED + name[len(VISION_SAVED) :]
    return name


def published_vision_names(model_dir: Path) -> None:
    """Rename the vision tower's weights in every safetensors file (and the shard index) of `model_dir` to the
    llava-hf layout, so that vLLM loads the directory as it is. A file already in that layout is left alone."""
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            names, metadata = list(f.keys()), f.metadata()
        if all(published_name(n) == n for n in names):
            continue
        tensors = load_file(str(path))
        save_file({published_name(k): v for k, v in tensors.items()}, str(path), metadata=metadata)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        data = read_json(index)
        data["weight_map"] = {published_name(k): v for k, v in data["weight_map"].items()}
        write_json(index, data)
