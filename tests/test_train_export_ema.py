"""``output.export_ema_decay``: the adapter holds an EMA of the online LoRA weights (training/ema.py).

References: diffusers' ``EMAModel`` (its decay schedule, step by step) and the online weights of
every step's checkpoint (the EMA recomputed from them must be what the adapter holds)."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from lcm_lora.training import checkpoint as ckpt
from lcm_lora.training.ema import LoraEma
from lcm_lora.training.trainer import train
from tiny_training import tiny_teacher_and_data

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
MU = 0.9


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    teacher, data = tiny_teacher_and_data(root, n=12, size=16)
    return root, teacher, data


def _overrides(assets, **extra):
    root, teacher, data = assets
    base = {
        "teacher": teacher, "data": data, "max_steps": 5, "batch_size": 4, "lora.rank": 4, "lora.alpha": 4,
        "validation.every": 0, "checkpoint.every": 1, "checkpoint.keep": 20, "logging.progress": "false",
        "data.cache_dir": root / "cache", "optim.learning_rate": 0.01, "output.dtype": "fp32",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_warmup_decay_is_diffusers_ema_model():
    from diffusers.training_utils import EMAModel

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen))]
    ours = LoraEma([("a", params[0]), ("b", params[1])], MU, warmup=True)
    theirs = EMAModel(params, decay=MU)
    for _ in range(100):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=gen))
        ours.update()
        theirs.step(params)
        torch.testing.assert_close(ours.shadow["a"], theirs.shadow_params[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours.shadow["b"], theirs.shadow_params[1], rtol=1e-6, atol=1e-6)
    assert ours.current_decay() == MU  # warmed up: (1 + 100) / 110 > 0.9


def _online(tensors):
    return {k: v for k, v in tensors.items() if not k.startswith(("ema.", "export_ema."))}


def _fused_output(teacher_dir, adapter_path):
    from diffusers import UNet2DConditionModel

    from lcm_lora.lcm_core.fuse import fuse_into_module
    from lcm_lora.lcm_core.lora import read_adapter

    unet = UNet2DConditionModel.from_pretrained(teacher_dir, subfolder="unet", local_files_only=True).eval()
    fuse_into_module(unet, read_adapter(adapter_path), strict=True)
    return _probe(unet)


def _probe(unet):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    ehs = torch.randn(2, 16, 32, generator=gen)
    with torch.no_grad():
        return unet(x, torch.tensor([999, 259]), encoder_hidden_states=ehs).sample


def _student_output(teacher_dir, tensors):
    from lcm_lora.training.student import add_lora
    from lcm_lora.training.teacher import load_teacher_folder

    unet = load_teacher_folder(Path(teacher_dir)).unet
    named = add_lora(unet, 4, 4, 0.0, None)
    with torch.no_grad():
        for name, p in named:
            p.copy_(tensors[name])
    return _probe(unet.eval())


def test_adapter_is_the_ema_of_every_steps_online_weights(assets, tmp_path):
    from diffusers.training_utils import EMAModel

    from lcm_lora.lcm_core.lora import read_adapter

    _, teacher_dir, _ = assets
    result = train(TINY, tmp_path / "run", overrides=_overrides(assets, **{"output.export_ema_decay": MU}), progress=False)
    steps = [ckpt.load_checkpoint(p).tensors for _, p in ckpt.list_checkpoints(tmp_path / "run")]
    assert len(steps) == 5
    names = sorted(_online(steps[0]))
    params = [torch.nn.Parameter(steps[0][n].clone()) for n in names]
    reference = EMAModel(params, decay=MU)
    for tensors in steps:  # the EMA of the online weights after each optimizer step
        with torch.no_grad():
            for p, n in zip(params, names):
                p.copy_(tensors[n])
        reference.step(params)
    expected = dict(zip(names, reference.shadow_params))
    last = steps[-1]
    for n in names:
        torch.testing.assert_close(last["export_ema." + n], expected[n], rtol=1e-6, atol=1e-7)
    assert int(last["export_ema.updates"]) == 5

    fused = _fused_output(teacher_dir, result.adapter_path)
    torch.testing.assert_close(fused, _student_output(teacher_dir, expected), rtol=1e-4, atol=1e-5)
    online_out = _student_output(teacher_dir, _online(last))
    assert (fused - online_out).abs().max() > 1e-3  # the averaged weights, not the last ones
    assert read_adapter(result.adapter_path).metadata["lcm_lora.export_ema_decay"] == str(MU)


def test_resumed_run_writes_the_same_averaged_adapter(assets, tmp_path):
    over = _overrides(assets, **{"output.export_ema_decay": MU, "checkpoint.every": 0})
    full = train(TINY, tmp_path / "full", overrides=over, progress=False)

    def interrupt(step, loss):
        if step == 2:
            signal.raise_signal(signal.SIGTERM)

    part = train(TINY, tmp_path / "split", overrides=over, progress=False, on_step=interrupt)
    assert part.status == "interrupted"
    rest = train(TINY, tmp_path / "split", resume=True, overrides=over, progress=False)
    assert rest.final_step == 5
    from safetensors.torch import load_file

    a, b = load_file(full.adapter_path), load_file(rest.adapter_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_default_writes_the_online_weights(assets, tmp_path):
    _, teacher_dir, _ = assets
    result = train(TINY, tmp_path / "run", overrides=_overrides(assets, max_steps=2), progress=False)
    last = ckpt.load_checkpoint(result.checkpoint).tensors
    assert not any(k.startswith("export_ema.") for k in last)
    torch.testing.assert_close(_fused_output(teacher_dir, result.adapter_path), _student_output(teacher_dir, last),
                               rtol=1e-4, atol=1e-5)


def test_ema_switched_on_at_resume_averages_from_there(assets, tmp_path):
    """output.* may change on resume: a checkpoint without the average starts it at the resumed step (warned)."""
    def interrupt(step, loss):
        if step == 2:
            signal.raise_signal(signal.SIGTERM)

    plain = _overrides(assets, **{"checkpoint.every": 0})
    assert train(TINY, tmp_path / "run", overrides=plain, progress=False, on_step=interrupt).status == "interrupted"
    with pytest.warns(UserWarning, match="no exported-EMA weights"):
        rest = train(TINY, tmp_path / "run", resume=True, overrides=plain + [f"output.export_ema_decay={MU}"], progress=False)
    last = ckpt.load_checkpoint(rest.checkpoint).tensors
    assert int(last["export_ema.updates"]) == 3  # steps 3, 4, 5: the average began at the resumed step


def test_bare_keys_stay_unambiguous():
    """``ema_decay=`` (the EMA target's μ) still resolves to ``lcd.ema_decay``; the exported average has its own name."""
    from lcm_lora.training.config import load_config

    cfg = load_config(TINY, ["ema_decay=0.5", "export_ema_decay=0.9"])
    assert cfg.lcd.ema_decay == 0.5 and cfg.output.export_ema_decay == 0.9
