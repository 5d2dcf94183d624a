"""The toy vision tower's pretraining: labels read off scenes, and a tower that learns what the questions need."""

from __future__ import annotations

import torch

from firellava.toy.scenes import COLOURS, SHAPES, Scene, Shape
from firellava.toy.tiny_models import build_vision_tower
from firellava.toy.vision_pretrain import (
    FEATURE_LAYER,
    NONE,
    VisionPretrainSpec,
    centre_labels,
    pretrain_vision_tower,
    scene_labels,
    up_to_feature_layer,
)
from tests.conftest import toy_world_spec


def test_scene_labels_are_colour_shape_pairs_and_counts():
    scene = Scene(
        1,
        64,
        48,
        (Shape("circle", "red", (1, 1, 14, 14)), Shape("triangle", "blue", (30, 1, 14, 14))),
    )
    pairs, counts = scene_labels([scene])
    grid = pairs.view(len(COLOURS), len(SHAPES))
    colours = list(COLOURS)
    assert grid[colours.index("red"), SHAPES.index("circle")] == 1
    assert grid[colours.index("blue"), SHAPES.index("triangle")] == 1
    assert grid.sum() == 2 and counts.tolist() == [1]  # two shapes: class 1


def test_centre_labels_mark_the_patch_of_each_shape_centre_on_the_padded_square():
    # 96x48 pads to 96x96 with 24 rows above; a 6x6 grid has 16-pixel patches.
    scene = Scene(
        1,
        96,
        48,
        (Shape("circle", "red", (0, 0, 16, 16)), Shape("triangle", "blue", (80, 32, 16, 16))),
    )
    colours, kinds = centre_labels([scene], grid=6)
    red_at, blue_at = 2 * 6 + 0, 4 * 6 + 5  # centres (8, 32) and (88, 64) on the square
    assert colours[0, red_at] == 1 + list(COLOURS).index("red") and kinds[0, red_at] == 1 + SHAPES.index(
        "circle"
    )
    assert colours[0, blue_at] == 1 + list(COLOURS).index("blue")
    assert kinds[0, blue_at] == 1 + SHAPES.index("triangle")
    assert (kinds[0] != NONE).sum() == 2 and (colours[0] != NONE).sum() == 2


def test_pretraining_teaches_the_tower_to_count_and_changes_it():
    tower, _ = build_vision_tower(toy_world_spec().vision, seed=3)
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    probe = pretrain_vision_tower(tower, VisionPretrainSpec(steps=300, scenes=1024), seed=3)
    # Chance is 1/3; count is learned long before shapes are, so a short run checks count only.
    assert probe["count"] > 0.6, probe
    assert not tower.training
    assert any(not torch.equal(before[k], v) for k, v in tower.state_dict().items())


def test_the_tower_cut_at_the_feature_layer_gives_the_features_llava_reads_and_is_whole_again_after():
    tower, _ = build_vision_tower(toy_world_spec().vision, seed=1)
    pixels = torch.randn(2, 3, tower.config.image_size, tower.config.image_size)
    whole = tower(pixels, output_hidden_states=True).hidden_states[FEATURE_LAYER]
    layers = len(tower.encoder.layers)
    with up_to_feature_layer(tower):
        assert len(tower.encoder.layers) == layers + 1 + FEATURE_LAYER < layers
        assert torch.equal(tower(pixels).last_hidden_state, whole)
    assert len(tower.encoder.layers) == layers
