"""The training loop on a tiny SD-like teacher (CPU): resume exactness, SIGTERM, NaN, checkpoints,
events, validation, loss decrease, and that the adapter loads in diffusers and lcm_core."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from lcm_lora.lcm_core.errors import ConfigError, OutputExistsError
from lcm_lora.training import checkpoint as ckpt
from lcm_lora.training.run_log import read_events
from lcm_lora.training.trainer import NonFiniteLossError, train
from tiny_training import tiny_teacher_and_data

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    teacher, data = tiny_teacher_and_data(root, n=12, size=20)  # 20 px: resized + cropped to 16
    return root, teacher, data


def _overrides(assets, **extra):
    root, teacher, data = assets
    base = {
        "teacher": teacher, "data": data, "max_steps": 6, "batch_size": 4, "lora.rank": 4, "lora.alpha": 4,
        "validation.every": 0, "checkpoint.every": 0, "logging.progress": "false",
        "data.cache_latents": "false", "data.cache_text": "false", "data.crop": "random", "data.random_flip": "true",
        "data.cache_dir": root / "cache",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_resume_reproduces_the_uninterrupted_run(assets, tmp_path):
    full = train(TINY, tmp_path / "full", overrides=_overrides(assets), progress=False)
    assert full.status == "finished" and full.final_step == 6 and len(full.losses) == 6

    def interrupt(step, loss):
        if step == 3:
            signal.raise_signal(signal.SIGTERM)  # handled by the trainer: checkpoint, clean return

    part = train(TINY, tmp_path / "split", overrides=_overrides(assets), progress=False, on_step=interrupt)
    assert part.status == "interrupted" and part.final_step == 3 and part.adapter_path is None
    assert part.checkpoint.name == "step-00000003" and (part.checkpoint / "trainer_state.json").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    rest = train(TINY, tmp_path / "split", resume=True, overrides=_overrides(assets), progress=False)
    assert rest.start_step == 3 and rest.final_step == 6
    assert part.losses + rest.losses == full.losses  # bitwise: same data order, noise, optimizer state

    a = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "full")[-1][1]).tensors
    b = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "split")[-1][1]).tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    events = read_events(tmp_path / "split")
    ends = [e for e in events if e["event"] == "end"]
    assert [e["status"] for e in ends] == ["interrupted", "finished"]
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "it_s", "eta_s", "max_steps"} <= e.keys() for e in steps)
    assert (tmp_path / "split" / "lcm_lora.safetensors").is_file() and (tmp_path / "split" / "metrics.csv").is_file()


def test_new_run_refuses_a_folder_with_checkpoints(assets, tmp_path):
    out = tmp_path / "run"
    train(TINY, out, overrides=_overrides(assets, max_steps=1), progress=False)
    with pytest.raises(OutputExistsError, match="--resume"):
        train(TINY, out, overrides=_overrides(assets, max_steps=1), progress=False)
    with pytest.raises(ConfigError, match="different configuration"):
        train(TINY, out, resume=True, overrides=_overrides(assets, max_steps=2, **{"lcd.w_min": 4}), progress=False)


def test_a_refused_resume_is_said_before_the_setup_and_a_trailing_slash_is_the_same_path(assets, tmp_path, monkeypatch):
    """The resume check reads the checkpoint's trainer_state.json first: a changed lora.rank is refused before the
    teacher is loaded or a cache filled. "teacher/" and "teacher" are one folder, not a changed teacher.path."""
    from lcm_lora.training import trainer as trainer_module

    out = tmp_path / "run"
    train(TINY, out, overrides=_overrides(assets, max_steps=1), progress=False)
    monkeypatch.setattr(trainer_module.TrainingSession, "setup", lambda *a, **k: pytest.fail("set up before refusing"))
    with pytest.raises(ConfigError, match=r"different configuration \(lora.rank 4 -> 8\)"):
        train(TINY, out, resume=True, overrides=_overrides(assets, max_steps=2, **{"lora.rank": 8}), progress=False)
    monkeypatch.undo()
    root, teacher, data = assets
    slashed = _overrides(assets, max_steps=2)
    slashed[0] = f"teacher={teacher}/"
    assert train(TINY, out, resume=True, overrides=slashed, progress=False).final_step == 2


def test_new_run_never_overwrites_an_earlier_runs_adapter(assets, tmp_path):
    """A folder without checkpoints (checkpoint.every 0, or deleted) but with an earlier run's adapter, or --output
    pointed at a loras folder: refused, the files untouched. A run that stopped before it wrote an adapter (its
    data was refused, say) left only a config.yaml: the same command then runs there."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "lcm_lora.safetensors").write_bytes(b"earlier run")
    (out / "config.yaml").write_bytes(b"earlier config")
    with pytest.raises(OutputExistsError, match="earlier run's adapter lcm_lora.safetensors"):
        train(TINY, out, overrides=_overrides(assets, max_steps=1), progress=False)
    assert (out / "lcm_lora.safetensors").read_bytes() == b"earlier run"
    assert (out / "config.yaml").read_bytes() == b"earlier config"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "lcm_lora.safetensors"]
    a_file = tmp_path / "a.safetensors"
    a_file.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        train(TINY, a_file, overrides=_overrides(assets, max_steps=1), progress=False)
    failed = tmp_path / "failed"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images found"):
        train(TINY, failed, overrides=_overrides(assets, max_steps=1, data=tmp_path / "empty"), progress=False)
    assert (failed / "config.yaml").is_file() and not (failed / "lcm_lora.safetensors").exists()
    res = train(TINY, failed, overrides=_overrides(assets, max_steps=1), progress=False)
    assert res.status == "finished" and (failed / "lcm_lora.safetensors").is_file()


def test_resume_without_a_checkpoint_never_replaces_a_finished_adapter(assets, tmp_path):
    """`--resume` on a finished run whose checkpoints are gone would start again from step 0 and overwrite its
    adapter: refused, files untouched. A run that stopped before its first checkpoint starts at 0, with a warning."""
    out = tmp_path / "run"
    train(TINY, out, overrides=_overrides(assets, max_steps=1), progress=False)
    import shutil

    shutil.rmtree(out / "checkpoints")  # (the last step is always checkpointed: deleted, say, to save space)
    adapter = (out / "lcm_lora.safetensors").read_bytes()
    with pytest.raises(OutputExistsError, match="no checkpoint to continue that run from .*--resume would start again "
                                                "from step 0 and replace it; use a new folder; nothing was overwritten"):
        train(TINY, out, resume=True, overrides=_overrides(assets, max_steps=2), progress=False)
    assert (out / "lcm_lora.safetensors").read_bytes() == adapter
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    with pytest.warns(ckpt.CheckpointWarning, match="found no checkpoint .*starting from step 0"):
        res = train(TINY, stopped, resume=True, overrides=_overrides(assets, max_steps=1), progress=False)
    assert res.status == "finished" and res.start_step == 0


def test_resuming_from_an_earlier_checkpoint_sets_the_later_ones_aside(assets, tmp_path):
    """Resume from step 2 of a 4-step run (say, after a divergence, with a lower learning rate): steps 3 and 4 of the
    abandoned run move to checkpoints/abandoned-*/ (kept, not deleted), so a later plain --resume continues the
    resumed run, and pruning (keep 2) removes that run's oldest, not the abandoned run's newest."""
    out = tmp_path / "run"
    every = {"checkpoint.every": 1, "checkpoint.keep": 5}
    train(TINY, out, overrides=_overrides(assets, max_steps=4, **every), progress=False)
    abandoned_4 = (out / "checkpoints" / "step-00000004" / "lora.safetensors").read_bytes()
    branch = out / "checkpoints" / "step-00000002"
    with pytest.warns(ckpt.CheckpointWarning, match="the 2 later checkpoint.*step-00000003, step-00000004.*moved to"):
        train(TINY, out, resume=str(branch), overrides=_overrides(
            assets, max_steps=3, **{"optim.learning_rate": 5e-4, "checkpoint.every": 1, "checkpoint.keep": 2}),
            progress=False)
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2, 3]
    (aside,) = [p for p in (out / "checkpoints").iterdir() if p.name.startswith("abandoned-")]
    assert sorted(p.name for p in aside.iterdir()) == ["step-00000003", "step-00000004"]
    assert (aside / "step-00000004" / "lora.safetensors").read_bytes() == abandoned_4
    assert ckpt.resolve_resume(out, True) == out / "checkpoints" / "step-00000003"
    res = train(TINY, out, resume=True, overrides=_overrides(assets, max_steps=4), progress=False)
    assert res.start_step == 3 and res.final_step == 4


def test_a_changed_max_steps_under_a_shaped_schedule_is_warned_about(assets, tmp_path):
    """A cosine schedule is shaped by max_steps: continuing a 3-step run to 6 steps is a different learning-rate
    curve than 6 steps straight (the rate jumps back up), so the resume says so; a constant schedule is exact."""
    cosine = {"optim.lr_scheduler": "cosine", "optim.lr_warmup_steps": 1, "checkpoint.every": 1}
    train(TINY, tmp_path / "cos", overrides=_overrides(assets, max_steps=3, **cosine), progress=False)
    with pytest.warns(ckpt.CheckpointWarning, match="max_steps 3 -> 6: the cosine learning-rate schedule is shaped"):
        train(TINY, tmp_path / "cos", resume=True, overrides=_overrides(assets, max_steps=6, **cosine), progress=False)
    train(TINY, tmp_path / "const", overrides=_overrides(assets, max_steps=3), progress=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ckpt.CheckpointWarning)
        train(TINY, tmp_path / "const", resume=True, overrides=_overrides(assets, max_steps=4), progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(assets, tmp_path, monkeypatch):
    from lcm_lora.training import lcd_step

    original = lcd_step.LcdLoss.__call__
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(lcd_step.LcdLoss, "__call__", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="step 4") as e:
        train(TINY, out, overrides=_overrides(assets, **{"checkpoint.every": 2}), progress=False)
    assert "step-00000002" in str(e.value)
    kept = ckpt.list_checkpoints(out)
    assert [s for s, _ in kept] == [2]
    state = ckpt.load_checkpoint(kept[0][1])
    assert all(torch.isfinite(t).all() for t in state.tensors.values())
    assert not (out / "lcm_lora.safetensors").exists()
    assert read_events(out)[-1]["status"] == "diverged"


def test_checkpoints_keep_last_k_and_ignore_partial_saves(assets, tmp_path, monkeypatch):
    out = tmp_path / "keep"
    train(TINY, out, overrides=_overrides(assets, **{"checkpoint.every": 1, "checkpoint.keep": 2}), progress=False)
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [5, 6]
    # A save killed half-way leaves only a hidden temp folder; an incomplete step folder is not a checkpoint.
    calls = {"n": 0}
    real_save = torch.save

    def dying_save(*args, **kwargs):
        calls["n"] += 1
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(out, 7, {"x": torch.zeros(1)}, {}, {}, keep=2)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    (ckpt.checkpoints_dir(out) / "step-00000009").mkdir()  # no trainer_state.json
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [5, 6]
    assert ckpt.resolve_resume(out, True).name == "step-00000006"
    assert not any(p.name.startswith(".step-00000007") for p in ckpt.checkpoints_dir(out).iterdir())


def test_validation_grid_and_event(assets, tmp_path):
    out = tmp_path / "val"
    train(TINY, out, overrides=_overrides(assets, max_steps=2, **{"validation.every": 2}), progress=False)
    events = [e for e in read_events(out) if e["event"] == "validation"]
    assert len(events) == 1 and events[0]["steps"] == [1, 2, 4]
    from PIL import Image

    from lcm_lora.training.validation import grid_geometry

    # tiny_cpu.yaml gives no prompts: the first distinct captions of the data (read here from the .txt files)
    captions = []
    for txt in sorted(Path(assets[2]).glob("*.txt")):
        caption = txt.read_text().strip().splitlines()[0]
        if caption not in captions:
            captions.append(caption)
    assert events[0]["prompts"] == captions[:4]
    with Image.open(events[0]["images"][0]) as im:  # columns: prompts, rows: 1/2/4 steps, enlarged + labelled
        assert im.size == grid_geometry(3, len(events[0]["prompts"]), 16, 16)["size"]


def _student(teacher_dir, tensors, rank):
    """Teacher UNet + LoRA with the trained tensors (peft names), as the trainer holds it."""
    from lcm_lora.training.student import add_lora
    from lcm_lora.training.teacher import load_teacher_folder

    teacher = load_teacher_folder(Path(teacher_dir))
    named = add_lora(teacher.unet, rank, rank, 0.0, None)
    with torch.no_grad():
        for name, p in named:
            p.copy_(tensors[name])
    return teacher


def test_adapter_loads_in_diffusers_and_lcm_core(assets, tmp_path):
    from diffusers import StableDiffusionPipeline

    from lcm_lora.lcm_core.fuse import fuse_into_module
    from lcm_lora.lcm_core.lora import read_adapter

    _, teacher_dir, _ = assets
    out = tmp_path / "export"
    result = train(TINY, out, overrides=_overrides(assets, max_steps=3, **{"optim.learning_rate": 0.01}), progress=False)
    tensors = ckpt.load_checkpoint(result.checkpoint).tensors
    student = _student(teacher_dir, tensors, 4).unet.eval()

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([999, 259])
    ehs = torch.randn(2, 16, 32, generator=gen)
    with torch.no_grad():
        ours = student(x, t, encoder_hidden_states=ehs).sample
        pipe = StableDiffusionPipeline.from_pretrained(teacher_dir, local_files_only=True)
        base = pipe.unet(x, t, encoder_hidden_states=ehs).sample
        pipe.load_lora_weights(result.adapter_path)  # kohya file → diffusers' own conversion
        theirs = pipe.unet(x, t, encoder_hidden_states=ehs).sample
    assert (ours - base).abs().max() > 1e-3  # the LoRA is not a no-op
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)

    adapter = read_adapter(result.adapter_path)
    assert adapter.source_format == "kohya" and adapter.ranks() == {4}
    assert adapter.metadata["lcm_lora.steps"] == "3" and adapter.metadata["lcm_lora.rank"] == "4"
    assert len(adapter.metadata["lcm_lora.config_hash"]) == 16
    fused = StableDiffusionPipeline.from_pretrained(teacher_dir, local_files_only=True).unet.eval()
    assert len(fuse_into_module(fused, adapter, strict=True)) == len(adapter)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, t, encoder_hidden_states=ehs).sample, ours, rtol=1e-4, atol=1e-5)


def test_loss_decreases_on_a_fixed_evaluation_batch(assets, tmp_path):
    """LCD loss on a held-out fixed draw (same latents, t, ε, ω) before and after training."""
    from lcm_lora.training.ddim_solver import DDIMSolver
    from lcm_lora.training.lcd_step import LcdLoss, sample_lcd_randomness
    from lcm_lora.training.student import adapters_disabled
    from lcm_lora.training.teacher import build_cond, unet_forward

    _, teacher_dir, _ = assets
    out = tmp_path / "decrease"
    over = _overrides(assets, max_steps=40, batch_size=8, **{"optim.learning_rate": 3e-3, "lcd.w_min": 1, "lcd.w_max": 3})
    result = train(TINY, out, overrides=over, progress=False)
    trained = ckpt.load_checkpoint(result.checkpoint).tensors
    initial = {k: (torch.zeros_like(v) if "lora_B" in k else v) for k, v in trained.items()}  # B = 0: student = teacher

    def eval_loss(tensors):
        teacher = _student(teacher_dir, tensors, 4)
        unet = teacher.unet.eval()
        solver = DDIMSolver(teacher.alphas_cumprod, 50)
        lcd = LcdLoss(solver, "epsilon", "huber", 0.001)
        gen = torch.Generator().manual_seed(123)
        latents = torch.randn(32, 4, 8, 8, generator=gen) * 0.8
        cond = build_cond(teacher.encode_text(["a red circle", "a blue square"] * 16))
        uncond = build_cond({k: v.expand(32, *v.shape[1:]) for k, v in teacher.uncond_text("auto").items()})
        rnd = sample_lcd_randomness(latents.shape, 50, 1.0, 3.0, gen)

        def model(x, t, c):
            return unet_forward(unet, x, t, c)

        def teacher_fn(x, t, c):
            with adapters_disabled(unet):
                return unet_forward(unet, x, t, c)

        with torch.no_grad():
            return float(lcd(model, teacher_fn, model, latents, cond, uncond, rnd))

    before, after = eval_loss(initial), eval_loss(trained)
    assert after < 0.9 * before, (before, after)
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < first, (first, last)


def test_config_error_names_file_and_key_through_the_cli(tmp_path, capsys):
    from lcm_lora.training.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 4\n")
    assert main(["--config", str(bad), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "train.batch_sise" in err
    assert main(["--config", str(TINY), "--output", str(tmp_path / "o"), "teacher=" + str(tmp_path / "nope"), "data=x"]) == 2
    assert "teacher.path" in capsys.readouterr().err


def test_ema_target_bf16_autocast_checkpointing_and_accumulation(assets, tmp_path):
    """The paper's EMA target θ⁻, bf16 autocast with fp32 LoRA weights, gradient checkpointing, accumulation."""
    out = tmp_path / "ema"
    over = _overrides(assets, max_steps=3, **{"lcd.target": "ema", "lcd.ema_decay": 0.5, "train.mixed_precision": "bf16",
                                               "train.gradient_checkpointing": "true", "train.gradient_accumulation": 2,
                                               "optim.learning_rate": 0.01})
    result = train(TINY, out, overrides=over, progress=False)
    assert result.status == "finished" and all(torch.isfinite(torch.tensor(result.losses)))
    tensors = ckpt.load_checkpoint(result.checkpoint).tensors
    online = {k: v for k, v in tensors.items() if not k.startswith("ema.")}
    assert online and all(v.dtype == torch.float32 for v in online.values())
    # θ⁻ after 3 updates with μ = 0.5 lags the online weights but has moved away from the zero init of B
    b_keys = [k for k in online if "lora_B" in k]
    ema_b = torch.cat([tensors["ema." + k].flatten() for k in b_keys])
    online_b = torch.cat([online[k].flatten() for k in b_keys])
    assert 0 < float(ema_b.abs().max()) and not torch.allclose(ema_b, online_b)


def test_adapter_switch_gives_the_teacher_and_restores_the_student(assets):
    from diffusers import UNet2DConditionModel

    from lcm_lora.training.student import AdapterSwitch, add_lora

    _, teacher_dir, _ = assets
    base = UNet2DConditionModel.from_pretrained(teacher_dir, subfolder="unet").eval()
    unet = UNet2DConditionModel.from_pretrained(teacher_dir, subfolder="unet").eval()
    named = add_lora(unet, 4, 4, 0.0, None)
    with torch.no_grad():
        for _, p in named:
            p.normal_(0, 0.1)
    switch = AdapterSwitch(unet)
    assert switch.fast and switch.layers
    gen = torch.Generator().manual_seed(0)
    x, t, ehs = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([999, 19]), torch.randn(2, 16, 32, generator=gen)
    with torch.no_grad():
        student = unet(x, t, encoder_hidden_states=ehs).sample
        with switch.disabled():
            teacher = unet(x, t, encoder_hidden_states=ehs).sample
        again = unet(x, t, encoder_hidden_states=ehs).sample
        reference = base(x, t, encoder_hidden_states=ehs).sample
    assert torch.equal(teacher, reference) and torch.equal(again, student) and not torch.allclose(student, reference)
    assert all(p.requires_grad for _, p in named)


def test_non_finite_gradients_of_a_finite_loss_stop_without_updating(assets, tmp_path, monkeypatch):
    """A finite loss can have NaN gradients (pseudo-Huber at c = 0 where a difference is exactly 0): the trainer
    checked only the loss, so AdamW wrote NaN weights and the run failed a step later saying "without updating"."""
    from lcm_lora.training import lcd_step

    original, calls = lcd_step.LcdLoss.__call__, {"n": 0}

    def nan_gradient(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        calls["n"] += 1
        return loss + (loss * 0).sqrt() if calls["n"] == 2 else loss  # value unchanged, d/dloss = NaN

    monkeypatch.setattr(lcd_step.LcdLoss, "__call__", nan_gradient)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="non-finite loss or gradients .* at step 2; stopped without updating"):
        train(TINY, out, overrides=_overrides(assets, max_steps=4, **{"checkpoint.every": 1}), progress=False)
    (saved,) = ckpt.list_checkpoints(out)
    assert saved[0] == 1 and all(torch.isfinite(t).all() for t in ckpt.load_checkpoint(saved[1]).tensors.values())


def test_a_step_gradscaler_skips_leaves_the_schedule_and_the_ema_alone():
    """fp16: GradScaler skips a step with inf gradients (and lowers its scale); the LR schedule and the EMA target
    used to advance anyway. accelerate's scheduler (the reference scripts) does not step on a skipped step."""
    import types

    from lcm_lora.training.trainer import TrainingSession

    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([p], lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / 10)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    updates = []
    session = types.SimpleNamespace(scaler=scaler, optimizer=optimizer, params=[p], lr_scheduler=schedule,
                                    cfg=types.SimpleNamespace(optim=types.SimpleNamespace(max_grad_norm=1.0)),
                                    ema=types.SimpleNamespace(update=lambda: updates.append("ema")), export_ema=None)
    scaler.scale((p * float("inf")).sum()).backward()
    assert TrainingSession._lora_update(session) is True
    assert torch.equal(p.data, torch.ones(3)) and schedule.last_epoch == 0 and updates == []
    scaler.scale(p.sum()).backward()  # a finite step: everything advances
    assert TrainingSession._lora_update(session) is True
    assert not torch.equal(p.data, torch.ones(3)) and schedule.last_epoch == 1 and updates == ["ema"]


def test_sigterm_while_loading_ends_cleanly(assets, tmp_path, monkeypatch):
    from lcm_lora.training import batches

    def cancelled_prepare(self, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # e.g. the ComfyUI panel's cancel while latents are being cached

    monkeypatch.setattr(batches.TrainingData, "prepare", cancelled_prepare)
    result = train(TINY, tmp_path / "early", overrides=_overrides(assets), progress=False)
    assert result.status == "interrupted" and result.final_step == 0 and result.adapter_path is None
    events = read_events(tmp_path / "early")
    assert [e["event"] for e in events] == ["setup", "end"] and events[-1]["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_inside_an_image_read_is_an_interruption_not_a_bad_image(assets, tmp_path, monkeypatch):
    """The signal can land inside code that catches Exception (the image reader says "cannot read image" for any):
    the cancel must still end the run as interrupted, not blame the user's image."""
    import PIL.Image

    original, calls = PIL.Image.open, {"n": 0}

    def opened(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGTERM)  # the panel's Cancel while the images are scanned
        return original(*args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", opened)
    result = train(TINY, tmp_path / "scan", overrides=_overrides(assets), progress=False)
    assert calls["n"] >= 3 and result.status == "interrupted" and result.adapter_path is None
    assert read_events(tmp_path / "scan")[-1]["status"] == "interrupted"


def test_errors_are_recorded_in_the_event_stream(assets, tmp_path):
    from lcm_lora.training.teacher import TeacherError

    broken = tmp_path / "broken_teacher"
    broken.mkdir()
    with pytest.raises(TeacherError, match="missing 'unet/'"):
        train(TINY, tmp_path / "err", overrides=_overrides(assets, teacher=broken), progress=False)
    end = read_events(tmp_path / "err")[-1]
    assert end["event"] == "end" and end["status"] == "error" and "unet" in end["message"]


def test_resume_may_lower_the_learning_rate(assets, tmp_path):
    """After a divergence the fix is a lower rate: ``--resume optim.learning_rate=…`` continues the
    same schedule scaled by new/old. Closed form: the first resumed AdamW step has the same gradient
    and moments as the uninterrupted run's, so its update is exactly (new/old) times as large."""
    sched = {"lr_scheduler": "cosine", "lr_warmup_steps": 2, "checkpoint.every": 1, "checkpoint.keep": 10}
    full = train(TINY, tmp_path / "full", overrides=_overrides(assets, **sched), progress=False)

    def interrupt(step, loss):
        if step == 3:
            signal.raise_signal(signal.SIGTERM)

    train(TINY, tmp_path / "split", overrides=_overrides(assets, **sched), progress=False, on_step=interrupt)
    with pytest.warns(ckpt.CheckpointWarning, match="optim.learning_rate 0.001 -> 0.0005"):
        rest = train(TINY, tmp_path / "split", resume=True, progress=False,
                     overrides=_overrides(assets, **sched, **{"optim.learning_rate": 5e-4}))
    assert rest.start_step == 3 and rest.final_step == 6
    assert rest.losses[0] == full.losses[3]  # same parameters at step 3, same batch

    lr = {run: {e["step"]: e["lr"] for e in read_events(tmp_path / run) if e["event"] == "step"} for run in ("full", "split")}
    for step in (4, 5, 6):
        assert lr["split"][step] == pytest.approx(0.5 * lr["full"][step], rel=1e-12, abs=0)

    def params(run, step):
        return ckpt.load_checkpoint(tmp_path / run / "checkpoints" / f"step-{step:08d}").tensors

    base, full4, split4 = params("full", 3), params("full", 4), params("split", 4)
    names = [k for k in base if k in full4 and base[k].is_floating_point() and not torch.equal(full4[k], base[k])]
    assert names
    for k in names:  # differences of fp32 parameters: exact up to a few ulps of the parameter itself
        ulp = torch.finfo(torch.float32).eps * float(base[k].abs().max())
        torch.testing.assert_close(split4[k] - base[k], 0.5 * (full4[k] - base[k]), rtol=1e-4, atol=4 * ulp)

    with pytest.raises(ConfigError, match="different configuration"):  # anything else must still match
        train(TINY, tmp_path / "split", resume=True, progress=False,
              overrides=_overrides(assets, **sched, **{"lora.rank": 8, "max_steps": 8}))
