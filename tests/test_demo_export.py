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


def test_export_force_never_follows_a_link_or_replaces_a_file(tmp_path, capsys):
    """--force replaces the folders an export wrote; a file or a symlink in their place is refused before anything
    is written (it used to replace teacher/, then fail on data/, or fail after writing through the link)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    for name, make in (("data", lambda p: p.write_text("a file")), ("teacher", lambda p: p.symlink_to(elsewhere))):
        out = tmp_path / f"ex_{name}"
        out.mkdir()
        make(out / name)
        assert main(["demo", "--export", str(out), "--force"]) == 2
        err = capsys.readouterr().err
        assert f"{name}: is a file or a link" in err and len(err.strip().splitlines()) == 1
        assert sorted(p.name for p in out.iterdir()) == [name]
    assert (elsewhere / "keep.txt").read_text() == "mine" and sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]
