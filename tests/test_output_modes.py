"""Outputs honour the umask (issue 17, item 3): ``mkstemp``/``mkdtemp`` (0600/0700) and safetensors'
own writer (0600) must not leak into published files. Reference: the modes an ordinary ``open()`` /
``mkdir()`` gets under the same umask, measured here on the file system."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from lcm_lora.lcm_core.atomic_write import atomic_dir, atomic_file, current_umask
from lcm_lora.lcm_core.lora import read_adapter, write_adapter
from lcm_lora.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _ordinary_modes(tmp: Path) -> tuple[int, int]:
    """Modes of a file and a folder made the ordinary way under the current umask."""
    (tmp / "ordinary.txt").write_text("x")
    (tmp / "ordinary_dir").mkdir()
    return stat.S_IMODE((tmp / "ordinary.txt").stat().st_mode), stat.S_IMODE((tmp / "ordinary_dir").stat().st_mode)


def _modes_under(root: Path) -> dict[str, int]:
    items = [root, *root.rglob("*")]
    return {os.fspath(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in items if not p.is_symlink()}


def _assert_modes(root: Path, file_mode: int, dir_mode: int) -> None:
    wrong = {p: oct(m) for p, m in _modes_under(root).items()
             if m != (dir_mode if (root.parent / p).is_dir() else file_mode)}
    assert not wrong, f"expected files {oct(file_mode)}, folders {oct(dir_mode)}: {dict(list(wrong.items())[:8])}"


def test_current_umask_reads_the_process_umask(umask):
    assert current_umask() == umask


def test_atomic_outputs_and_adapters_get_ordinary_modes(umask, tmp_path):
    file_mode, dir_mode = _ordinary_modes(tmp_path)
    assert (file_mode, dir_mode) == (0o666 & ~umask, 0o777 & ~umask)
    out = tmp_path / "out"
    out.mkdir()
    with atomic_file(out / "a.txt") as tmp:
        tmp.write_text("hello")
    with atomic_dir(out / "folder") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
    g = torch.Generator().manual_seed(0)
    from safetensors.torch import save_file

    src = tmp_path / "src.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 320, generator=g),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(320, 4, generator=g)}, src)
    adapter = read_adapter(src)
    write_adapter(adapter, out / "kohya.safetensors", format="kohya")
    write_adapter(adapter, out / "peft_folder", format="peft")
    write_adapter(adapter, out / "diffusers.safetensors", format="diffusers")
    ckpt.save_checkpoint(out / "run", 1, {"w": torch.ones(3)}, {"state": {}, "param_groups": []}, {"data": {}}, keep=2)
    _assert_modes(out, file_mode, dir_mode)


@pytest.mark.parametrize("umask", [0o022], indirect=True)
def test_trainer_run_folder_gets_ordinary_modes(umask, tmp_path):
    """A whole run (checkpoints, caches, logs, validation grid, config, adapter; peft output)."""
    from lcm_lora.training.trainer import train
    from tiny_training import tiny_teacher_and_data

    teacher, data = tiny_teacher_and_data(tmp_path, n=8, size=16)
    run = tmp_path / "run"
    train(ROOT / "configs" / "tiny_cpu.yaml", run, progress=False, overrides=[
        f"teacher={teacher}", f"data={data}", "max_steps=2", "batch_size=4", "lora.rank=2", "lora.alpha=2",
        "checkpoint.every=1", "validation.every=2", "validation.steps=[1]", "output.format=peft"])
    file_mode, dir_mode = _ordinary_modes(tmp_path)
    names = {p.name for p in run.iterdir()}
    assert {"checkpoints", "cache", "validation", "config.yaml", "events.jsonl", "lcm_lora"} <= names, names
    _assert_modes(run, file_mode, dir_mode)
    _assert_modes(teacher, file_mode, dir_mode)
