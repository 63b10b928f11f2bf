"""Trainer validation grids (issue 17, item 11): prompts come from the config or the data's captions;
the grid is labelled (prompt header, step-count column) and tiny images are enlarged with
nearest-neighbour — checked against torch's ``interpolate(mode="nearest")`` as the reference."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lcm_lora.training.config import load_config
from lcm_lora.training.data import Record
from lcm_lora.training.validation import MIN_TILE, grid_geometry, save_grid, step_label, validation_prompts


def _records(captions):
    return [Record(captions=c, width=16, height=16, image=f"{i}.png") for i, c in enumerate(captions)]


def test_prompts_from_config_or_first_distinct_captions():
    records = _records([["a digit 3", "alt"], [""], ["a digit 3"], ["a digit 7"], ["b"], ["c"], ["d"], ["e"]])
    cfg = load_config({})
    assert cfg.validation.prompts is None  # the default: from the data
    assert validation_prompts(cfg, records) == ["a digit 3", "a digit 7", "b", "c"]
    cfg = load_config({}, ["validation.prompts=[x, y]"])
    assert validation_prompts(cfg, records) == ["x", "y"]
    assert validation_prompts(load_config({}), []) == []


def test_step_labels():
    assert [step_label(s) for s in (1, 2, 4)] == ["1 step", "2 steps", "4 steps"]


def test_grid_is_enlarged_nearest_and_labelled(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = [torch.rand(3, 1, 16, 16, generator=g) for _ in range(2)]  # 2 step counts x 3 prompts, grey
    path = save_grid(rows, tmp_path / "grid.png", ["a handwritten digit 0", "one", "two"], ["1 step", "2 steps"])
    geo = grid_geometry(2, 3, 16, 16)
    scale = geo["scale"]
    assert scale * 16 >= MIN_TILE and (scale - 1) * 16 < MIN_TILE
    image = np.asarray(Image.open(path).convert("L"), dtype=np.int64)
    assert image.shape == (geo["size"][1], geo["size"][0])
    th, tw = geo["tile"]
    for r, row in enumerate(rows):
        for j in range(row.shape[0]):
            reference = F.interpolate(row[j : j + 1], scale_factor=scale, mode="nearest")[0, 0]
            reference = (reference.clamp(0, 1) * 255).round().to(torch.int64).numpy()
            cell = image[geo["top"] + r * th : geo["top"] + (r + 1) * th, geo["left"] + j * tw : geo["left"] + (j + 1) * tw]
            assert np.array_equal(cell, reference), (r, j)
    # text was drawn: dark pixels in every prompt's header cell and every row's label cell
    for j in range(3):
        assert (image[: geo["top"], geo["left"] + j * tw : geo["left"] + (j + 1) * tw] < 128).any()
    for r in range(2):
        assert (image[geo["top"] + r * th : geo["top"] + (r + 1) * th, : geo["left"]] < 128).any()
