"""Pretraining the toy vision tower on the toy world's own scenes, before the pipeline ever sees it.

LLaVA starts from CLIP, whose patch features already say what is where; LLaVA only learns to read them. A
randomly initialised tower keeps a patch's mean colour but hides shape and count, so a finetuned toy model cannot
learn to answer shape and count questions (docs/experiments.md). So the toy world gives its tower what CLIP has.
It trains the tower on
freshly sampled scenes (image ids no data file uses) with labels read off each `Scene`, then drops the heads and
saves the tower like any other:

- on the mean of the patch features: which (colour, shape) pairs are present, and how many shapes there are;
- on each patch: the colour and the kind of the shape whose centre falls in it (or none), so every shape has a
  token of its own that says what it is. Without these targets the kind is barely readable per patch, and the
  shape of a colour is read less well too (docs/experiments.md).

The heads read the patch features LLaVA reads (`vision_feature_layer=-2`, CLS dropped), so the information has
to live in the tokens the projector gets; images go through the same pad-to-square processor as finetuning and
evaluation, and patches are counted on that padded square.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPVisionModel

from firellava.core.model_builder import build_image_processor
from firellava.core.progress import Progress
from firellava.toy.scenes import COLOURS, SHAPES, Scene, draw_scene, sample_scene

log = logging.getLogger(__name__)

# Above every id the toy data uses and below the held-out check's, so no pretraining scene is a data scene.
SCENE_ID_BASE = 800_000_000
FEATURE_LAYER = -2
MAX_SHAPES = 3
HELD_OUT = 256
# Count is the easy target: at full weight it crowds shapes out of the features; at this weight shapes are learned
# and count still is (docs/experiments.md).
COUNT_WEIGHT = 0.1
NONE = 0  # the per-patch class of a patch that holds no shape's centre; colours and kinds count from 1
# Most patches hold no centre; at full weight that class dominates the per-patch loss, and the colour and kind at
# the centres, which the toy questions ask about, are learned less well (docs/experiments.md).
NONE_WEIGHT = 0.3


@dataclass(frozen=True)
class VisionPretrainSpec:
    steps: int = 2000
    scenes: int = 4096
    batch_size: int = 64
    learning_rate: float = 2e-3


def scene_labels(scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pairs, counts): a multi-hot over colour x shape, and the number of shapes minus one."""
    pairs = torch.zeros(len(scenes), len(COLOURS), len(SHAPES))
    colours = list(COLOURS)
    for i, scene in enumerate(scenes):
        for shape in scene.shapes:
            pairs[i, colours.index(shape.colour), SHAPES.index(shape.kind)] = 1.0
    return pairs.flatten(1), torch.tensor([len(s.shapes) - 1 for s in scenes])


def centre_labels(scenes: list[Scene], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(colours, kinds), each (scenes, grid * grid) in row-major patch order: at the patch of the padded square
    that holds a shape's centre, its colour and kind (1-based), elsewhere `NONE`."""
    colours_of, kinds_of = list(COLOURS), list(SHAPES)
    colours = torch.full((len(scenes), grid * grid), NONE)
    kinds = torch.full((len(scenes), grid * grid), NONE)
    for i, scene in enumerate(scenes):
        side = max(scene.width, scene.height)
        # The padding on each side, as expand2square puts it.
        ox, oy = (side - scene.width) // 2, (side - scene.height) // 2
        for shape in scene.shapes:
            x, y, w, h = shape.box
            col = min(grid - 1, int((x + ox + w / 2) * grid / side))
            row = min(grid - 1, int((y + oy + h / 2) * grid / side))
            colours[i, row * grid + col] = 1 + colours_of.index(shape.colour)
            kinds[i, row * grid + col] = 1 + kinds_of.index(shape.kind)
    return colours, kinds


def scene_tensors(
    tower: CLIPVisionModel, scenes: list[Scene]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(pixels, labels) of the scenes: drawn and processed as finetuning processes images (pad to square), and
    every target the heads train on (`scene_labels`, `centre_labels` on the tower's patch grid)."""
    processor = build_image_processor(tower.config, image_aspect_ratio="pad")
    pixels = processor([draw_scene(s) for s in scenes], return_tensors="pt")["pixel_values"]
    pairs, counts = scene_labels(scenes)
    colours, kinds = centre_labels(scenes, tower.config.image_size // tower.config.patch_size)
    return pixels, {"pairs": pairs, "count": counts, "colour": colours, "kind": kinds}


class _Heads(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.pairs = nn.Linear(hidden, len(COLOURS) * len(SHAPES))
        self.count = nn.Linear(hidden, MAX_SHAPES)
        self.colour = nn.Linear(hidden, 1 + len(COLOURS))
        self.kind = nn.Linear(hidden, 1 + len(SHAPES))

    def forward(self, tower: CLIPVisionModel, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The heads on `tower`'s features, the tower cut at `FEATURE_LAYER` (`up_to_feature_layer`)."""
        return self.read(tower(pixels).last_hidden_state)

    def read(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The heads on the feature layer's hidden states (CLS first, then the patches)."""
        patches = features[:, 1:]
        pooled = patches.mean(dim=1)
        return {
            "pairs": self.pairs(pooled),
            "count": self.count(pooled),
            "colour": self.colour(patches),
            "kind": self.kind(patches),
        }


@contextlib.contextmanager
def up_to_feature_layer(tower: CLIPVisionModel) -> Iterator[None]:
    """Within the block the tower runs its layers up to `FEATURE_LAYER` only, so its last hidden state is the
    features LLaVA reads. No head reads the layers after it: their forward would be work thrown away, and they get
    no gradient either way. The features and every gradient are the same as the whole tower's."""
    encoder = tower.encoder
    layers = encoder.layers
    encoder.layers = layers[: len(layers) + 1 + FEATURE_LAYER]
    try:
        yield
    finally:
        encoder.layers = layers


def _class_weights(classes: int) -> torch.Tensor:
    weights = torch.ones(classes)
    weights[NONE] = NONE_WEIGHT
    return weights


# The per-patch heads' class weights, built once rather than at every step.
PATCH_CLASS_WEIGHTS = {"colour": _class_weights(1 + len(COLOURS)), "kind": _class_weights(1 + len(SHAPES))}


def _loss(out: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    ce = nn.functional.cross_entropy
    per_patch = sum(
        ce(out[k].flatten(0, 1), labels[k].flatten(), weight=weight)
        for k, weight in PATCH_CLASS_WEIGHTS.items()
    )
    return (
        nn.functional.binary_cross_entropy_with_logits(out["pairs"], labels["pairs"])
        + COUNT_WEIGHT * ce(out["count"], labels["count"])
        + per_patch
    )


@torch.no_grad()
def probe(tower: CLIPVisionModel, heads: _Heads, pixels: torch.Tensor, labels: dict[str, torch.Tensor]):
    """Held-out accuracy on what the toy questions need: the shape of the one object of a colour, the count, and
    the colour and kind read at each shape's centre patch."""
    out = heads(tower, pixels)
    truth = labels["pairs"].view(-1, len(COLOURS), len(SHAPES))
    single = truth.sum(-1) == 1  # colours held by exactly one shape: "what shape is red?" has one answer
    predicted = out["pairs"].view(-1, len(COLOURS), len(SHAPES)).argmax(-1)
    centres = labels["kind"] != NONE

    def at_centres(key: str) -> float:
        return round((out[key].argmax(-1)[centres] == labels[key][centres]).float().mean().item(), 3)

    return {
        "shape_of_colour": round((predicted[single] == truth.argmax(-1)[single]).float().mean().item(), 3),
        "count": round((out["count"].argmax(-1) == labels["count"]).float().mean().item(), 3),
        "centre_colour": at_centres("colour"),
        "centre_kind": at_centres("kind"),
    }


def pretrain_vision_tower(tower: CLIPVisionModel, spec: VisionPretrainSpec, seed: int) -> dict[str, float]:
    """Train `tower` in place; returns its accuracies on scenes it did not train on."""
    rng = random.Random(seed)
    scenes = [
        sample_scene(rng, SCENE_ID_BASE + i, with_word=rng.random() < 0.2)
        for i in range(spec.scenes + HELD_OUT)
    ]
    pixels, labels = scene_tensors(tower, scenes)

    torch.manual_seed(seed)
    heads = _Heads(tower.config.hidden_size)
    optimizer = torch.optim.Adam([*tower.parameters(), *heads.parameters()], lr=spec.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    held_out = slice(spec.scenes, None)

    def held_out_probe() -> dict[str, float]:
        return probe(tower.eval(), heads, pixels[held_out], {k: v[held_out] for k, v in labels.items()})

    with up_to_feature_layer(tower):
        metrics = held_out_probe()
        log.info("vision tower before pretraining, held-out %s", metrics)
        progress = Progress("vision tower pretraining", spec.steps * spec.batch_size, unit="images")
        for step in range(1, spec.steps + 1):
            tower.train()
            batch = torch.randint(0, spec.scenes, (spec.batch_size,), generator=generator)
            loss = _loss(heads(tower, pixels[batch]), {k: v[batch] for k, v in labels.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.update(spec.batch_size, extra=f"step {step}/{spec.steps}, loss {loss.item():.3f}")
            if step % 500 == 0 or step == spec.steps:
                metrics = held_out_probe()
                log.info("vision tower step %d/%d: held-out %s", step, spec.steps, metrics)
        progress.close()
    tower.eval()
    return metrics
