"""``lcm-lora demo --export DIR`` (issue 17, item 2): the demo's tiny teacher and training data for
``configs/tiny_cpu.yaml``. Checked against the demo's own sources: the shipped packed teacher
(weights equal after unpacking) and the dataset split/captions of :mod:`lcm_lora.demo.dataset`.
The README's route (export, then train on it) runs in ``test_readme_commands.py``."""
from __future__ import annotations

import json

import torch

from lcm_lora.cli.main import main
from lcm_lora.demo.dataset import load_digit_images, prompt_for, split_indices
from lcm_lora.demo.teacher_assets import DEFAULT_ASSET, read_teacher_asset
from lcm_lora.training.teacher import load_teacher_folder


def test_export_writes_teacher_and_data_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["demo", "--export", str(out)]) == 0
    assert "configs/tiny_cpu.yaml" in capsys.readouterr().out
    teacher = load_teacher_folder(out / "teacher")
    packed, _ = read_teacher_asset(DEFAULT_ASSET)
    for name, value in teacher.unet.state_dict().items():
        assert torch.equal(value, packed[f"unet.{name}"].float()), name
    rows = [json.loads(line) for line in (out / "data" / "metadata.jsonl").read_text().splitlines()]
    _, labels = load_digit_images(16)
    train = split_indices(labels, seed=0).train
    assert [r["text"] for r in rows] == [prompt_for(int(labels[i])) for i in train]
    assert all((out / "data" / r["file_name"]).is_file() for r in rows)
    # a second export refuses to replace them (one-line error, exit 2) unless --force
    assert main(["demo", "--export", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "teacher" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert main(["demo", "--export", str(out), "--force"]) == 0
