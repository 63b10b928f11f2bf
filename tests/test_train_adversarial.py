"""PCM's adversarial consistency loss in the trainer (``lcd.adversarial_weight``; :mod:`lcm_lora.training.adversarial`):
off = the previous trainer bit for bit, configuration errors naming the key, which parameters each step trains, the
chain-rule split of the G gradient against one plain backward, resume exactness across a D/G boundary, the adapter's
metadata and ``lcm-lora inspect``. Parity with the reference scripts: ``test_train_reference_step_pcm_adv*.py``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.training.config import config_hash, load_config, trajectory_dict

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from tiny_training import tiny_teacher_and_data

    root = tmp_path_factory.mktemp("adv")
    teacher, data = tiny_teacher_and_data(root, n=12, size=20)
    return root, teacher, data


def _overrides(assets, **extra):
    root, teacher, data = assets
    base = {"teacher": teacher, "data": data, "max_steps": 3, "batch_size": 4, "lora.rank": 4, "lora.alpha": 4,
            "validation.every": 0, "checkpoint.every": 0, "logging.progress": "false", "data.cache_dir": root / "cache"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


# ------------------------------------------------------------------------------------------- off = unchanged
def test_adversarial_off_keeps_losses_and_config_hashes_of_the_previous_trainer(assets, tmp_path):
    """3-step LCM and PCM runs and PCM config hashes as main 29f8764 (before the adversarial option) gave them on
    this tiny teacher (same machine: equal to the last bit; rel 1e-6 leaves room for another BLAS)."""
    from lcm_lora.training.trainer import train

    before = {"lcm": [0.07704931497573853, 0.43712931871414185, 0.13931171596050262],
              "pcm": [0.03546616807579994, 0.127070352435112, 0.04693573713302612]}
    for objective, losses in before.items():
        run = train(TINY, tmp_path / objective, overrides=_overrides(assets, **{"lcd.objective": objective}), progress=False)
        assert run.losses == pytest.approx(losses, rel=1e-6)
    assert config_hash(load_config({"lcd": {"objective": "pcm"}})) == "e9b0513ecdc895af"
    assert config_hash(load_config({"lcd": {"objective": "pcm", "solver_guidance": False, "phases": 2}})) == "f3d27075f668b943"
    assert config_hash(load_config({})) == "e882a53701023c64"
    for cfg in (load_config({}), load_config({"lcd": {"objective": "pcm"}})):
        assert not {k for k in trajectory_dict(cfg)["lcd"] if k.startswith("adversarial")}


# ------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("overrides,key", [
    (["lcd.adversarial_weight=0.1"], "lcd.adversarial_weight"),  # objective lcm
    (["lcd.objective=tcd", "lcd.adversarial_weight=0.1"], "lcd.adversarial_weight"),
    (["lcd.objective=tscd", "lcd.adversarial_weight=0.1"], "lcd.adversarial_weight"),
    (["lcd.objective=pcm", "lcd.adversarial_weight=-1"], "lcd.adversarial_weight"),
    (["lcd.objective=pcm", "lcd.adversarial_lr=1e-4"], "lcd.adversarial_lr"),  # weight 0: the key does nothing
    (["lcd.objective=pcm", "lcd.adversarial_real=data"], "lcd.adversarial_real"),
    (["lcd.objective=pcm", "lcd.adversarial_weight=0.1", "lcd.adversarial_real=pixels"], "lcd.adversarial_real"),
])
def test_invalid_adversarial_configs_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config({}, overrides)


def test_adversarial_keys_enter_the_trajectory_only_when_on():
    on = load_config({}, ["lcd.objective=pcm", "lcd.adversarial_weight=0.1"])
    traj = trajectory_dict(on)["lcd"]
    assert traj["adversarial_weight"] == 0.1 and "adversarial_lr" not in traj  # defaults dropped as solver_guidance
    data = load_config({}, ["lcd.objective=pcm", "lcd.adversarial_weight=0.1", "lcd.adversarial_real=data",
                            "lcd.adversarial_lr=2e-5"])
    assert trajectory_dict(data)["lcd"]["adversarial_real"] == "data" and trajectory_dict(data)["lcd"]["adversarial_lr"] == 2e-5
    hashes = {config_hash(c) for c in (load_config({"lcd": {"objective": "pcm"}}), on, data)}
    assert len(hashes) == 3


def test_print_schema_lists_the_adversarial_keys(capsys):
    from lcm_lora.training.cli import main

    assert main(["--print-schema"]) == 0
    out = capsys.readouterr().out
    for key in ("adversarial_weight:", "adversarial_lr:", "adversarial_real:"):
        assert key in out


# ------------------------------------------------------------------------------------------- what each step trains
def _tiny_student(variant="sd", channels=(32, 64)):
    from diffusers import UNet2DConditionModel

    from lcm_lora.training.student import add_lora
    from lcm_lora.training.tiny_models import tiny_unet_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**tiny_unet_config(4, 8, variant, channels))
    named = dict(add_lora(unet, 4, 4, 0.0, None))
    with torch.no_grad():
        for n, p in named.items():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return unet, named


def _batch(unet, variant="sd"):
    from lcm_lora.training.tiny_models import TINY_POOLED_DIM

    gen = torch.Generator().manual_seed(1)
    b = 3
    dim = unet.config.cross_attention_dim
    cond = {"encoder_hidden_states": torch.randn(b, 7, dim, generator=gen)}
    uncond = {"encoder_hidden_states": torch.zeros(b, 7, dim)}
    if variant == "sdxl":
        extra = {"text_embeds": torch.randn(b, TINY_POOLED_DIM, generator=gen), "time_ids": torch.tensor([[16., 16, 0, 0, 16, 16]] * b)}
        cond["added_cond_kwargs"] = extra
        uncond["added_cond_kwargs"] = {**extra, "text_embeds": torch.zeros(b, TINY_POOLED_DIM)}
    latents = torch.randn(b, 4, 8, 8, generator=gen)
    index = torch.tensor([3, 20, 45])
    return latents, cond, uncond, index, gen


def _adv_setup(unet, variant="sd"):
    from lcm_lora.training.adversarial import AdversarialLoss, Discriminator, sample_adversarial_randomness
    from lcm_lora.training.ddim_solver import DDIMSolver
    from lcm_lora.training.lcd_step import LcdLoss, LcdRandomness
    from lcm_lora.training.phased import pcm_end_timesteps
    from lcm_lora.training.teacher_common import sd_noise_scheduler

    solver = DDIMSolver(sd_noise_scheduler().alphas_cumprod, 50)
    lcd = LcdLoss(solver, "epsilon", "huber", 0.001, 10.0, "pcm", True)
    disc = Discriminator(unet)
    latents, cond, uncond, index, gen = _batch(unet, variant)
    s = pcm_end_timesteps(index, solver, 4)
    rnd = LcdRandomness(index, torch.randn(latents.shape, generator=gen), torch.tensor([3.0, 7.0, 12.0]), s)
    adv = sample_adversarial_randomness(latents.shape, s, 4, 1000, gen)
    return AdversarialLoss(lcd, disc, 0.1), disc, latents, cond, uncond, rnd, adv


def _models(unet):
    from lcm_lora.training.student import AdapterSwitch
    from lcm_lora.training.teacher import unet_forward

    switch = AdapterSwitch(unet)

    def student(x, t, c):
        return unet_forward(unet, x, t, c)

    def teacher(x, t, c):
        with switch.disabled():
            return unet_forward(unet, x, t, c)

    return student, teacher, switch.disabled


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_discriminator_step_trains_the_heads_only_and_generator_step_the_lora_only(variant):
    unet, named = _tiny_student(variant)
    adv_loss, disc, latents, cond, uncond, rnd, adv = _adv_setup(unet, variant)
    assert disc.layout == ("sdxl" if variant == "sdxl" else "sd15")
    student, teacher, off = _models(unet)
    d = adv_loss.discriminator_loss(student, teacher, student, latents, cond, uncond, rnd, adv, off)
    d.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in disc.heads.parameters() if p.dim() > 1)
    assert all(p.grad is None for p in unet.parameters())  # neither the frozen base nor the LoRA
    for p in disc.parameters():
        p.grad = None
    value, surrogate = adv_loss.generator_loss(student, teacher, student, latents, cond, uncond, rnd, adv, off)
    surrogate.backward()
    assert all(p.grad is not None for p in named.values())
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.grad is None for n, p in unet.named_parameters() if n not in named)
    assert all(not p.requires_grad for n, p in unet.named_parameters() if n not in named)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_generator_gradient_split_equals_one_backward_of_consistency_plus_weighted_g(checkpointing):
    """The trainer's two-part G gradient (∂G/∂fake with the LoRA off, then into the student) against the plain
    single backward of ``consistency + weight·G`` built without gradient checkpointing — the reference's form."""
    from lcm_lora.training.adversarial import hinge_g_loss, noise_travel
    from lcm_lora.training.lcd_step import distance

    unet, named = _tiny_student()
    adv_loss, disc, latents, cond, uncond, rnd, adv = _adv_setup(unet)
    student, teacher, off = _models(unet)
    model_pred, target_pred = adv_loss.lcd.predictions(student, teacher, student, latents, cond, uncond, rnd)
    fake = noise_travel(model_pred, adv.noise_fake, rnd.tcd_s, adv.t, adv_loss.lcd.solver.alphas_cumprod)
    with off():
        g = hinge_g_loss(disc.outputs(fake, adv.t, cond, features_grad=True))
    plain = distance(model_pred, target_pred, "huber", 0.001) + 0.1 * g
    plain.backward()
    expected = {n: p.grad.clone() for n, p in named.items()}
    unet.zero_grad(set_to_none=True)
    for p in disc.parameters():
        p.grad = None

    if checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()
    value, surrogate = adv_loss.generator_loss(student, teacher, student, latents, cond, uncond, rnd, adv, off)
    surrogate.backward()
    assert float(value) == pytest.approx(float(plain.detach()), rel=1e-6)
    for n, p in named.items():
        err = float((p.grad - expected[n]).norm() / expected[n].norm().clamp_min(1e-12))
        assert err <= 1e-5, (n, err)


def test_noise_travel_and_adversarial_timesteps():
    from lcm_lora.training.adversarial import noise_travel, sample_adversarial_randomness
    from lcm_lora.training.teacher_common import sd_noise_scheduler

    ac = sd_noise_scheduler().alphas_cumprod.float()
    gen = torch.Generator().manual_seed(0)
    x0, e1, e2 = (torch.randn(2000, 4, generator=gen) for _ in range(3))
    s, t = torch.full((2000,), 239), torch.full((2000,), 400)
    # from s to s: unchanged; q(x_s | x0) transported to t has the marginal q(x_t | x0): mean sqrt(ᾱ_t) x0, var 1 − ᾱ_t
    x_s = ac[239].sqrt() * x0 + (1 - ac[239]).sqrt() * e1
    assert torch.equal(noise_travel(x_s, e2, s, s, ac), x_s)
    x_t = noise_travel(x_s, e2, s, t, ac)
    resid = x_t - ac[400].sqrt() * x0
    assert float(resid.var()) == pytest.approx(float(1 - ac[400]), rel=0.03)
    # t uniform over [s, s + T // phases): all 250 values of a phase reachable, none outside
    s = torch.tensor([0, 239, 499, 739] * 500)
    adv = sample_adversarial_randomness((2000, 1, 1, 1), s, 4, 1000, torch.Generator().manual_seed(1))
    off = adv.t - s
    assert int(off.min()) == 0 and int(off.max()) == 249 and len(set(off.tolist())) == 250


def test_adversarial_timesteps_stay_in_the_phase_of_uneven_phase_starts():
    """With lcd.phase_starts the phases are uneven (0, 299, 599, 819 for 0,15,30,41): t is uniform over the sample's
    own phase [s, next edge) — the even width T // phases piled 28 % of the top phase's draws on 999, spilled 12 % of
    the 599 phase into the next, and never drew the top 50 timesteps of the two lower phases."""
    from lcm_lora.lcm_core.phased_timesteps import pcm_phase_edges
    from lcm_lora.training.adversarial import sample_adversarial_randomness

    edges = pcm_phase_edges(4, 50, 1000, [0, 15, 30, 41])
    assert edges == [0, 299, 599, 819]
    s = torch.tensor(edges * 4000)
    adv = sample_adversarial_randomness((len(s), 1, 1, 1), s, 4, 1000, torch.Generator().manual_seed(2), edges)
    for lower, upper in zip(edges, edges[1:] + [1000]):
        drawn = adv.t[s == lower]
        assert int(drawn.min()) == lower and int(drawn.max()) == upper - 1  # the whole phase, nothing above it
        counts = torch.bincount(drawn - lower, minlength=upper - lower).double()
        assert float(counts.max() / counts.mean()) < 2.0  # no point mass (the clamp to 999 gave 28 % at one value)


# ------------------------------------------------------------------------------------------- the loop
def test_resume_across_a_discriminator_generator_boundary_metadata_and_inspect(assets, tmp_path, capsys):
    import signal

    from lcm_lora.cli.main import main as cli_main
    from lcm_lora.lcm_core.safetensors_io import read_safetensors
    from lcm_lora.training import checkpoint as ckpt
    from lcm_lora.training.trainer import train

    ov = _overrides(assets, **{"lcd.objective": "pcm", "lcd.adversarial_weight": 0.1, "max_steps": 5})
    full = train(TINY, tmp_path / "full", overrides=ov, progress=False)
    assert full.status == "finished" and len(full.losses) == 5
    # D steps (0, 2, 4) report the hinge loss (≈ 2 for an untrained discriminator), G steps consistency + 0.1·G
    assert all(1.0 < full.losses[i] < 3.0 for i in (0, 2, 4)) and all(full.losses[i] < 1.0 for i in (1, 3))

    def interrupt(step, loss):
        if step == 3:  # after D, G, D: the next step is a G step
            signal.raise_signal(signal.SIGTERM)

    part = train(TINY, tmp_path / "split", overrides=ov, progress=False, on_step=interrupt)
    assert part.status == "interrupted" and part.final_step == 3
    saved = ckpt.load_checkpoint(part.checkpoint)
    assert any(k.startswith("discriminator.") for k in saved.tensors) and "discriminator" in saved.optimizer
    assert saved.optimizer["discriminator"]["state"]  # Adam moments after two D steps
    rest = train(TINY, tmp_path / "split", resume=True, overrides=ov, progress=False)
    assert rest.start_step == 3 and part.losses + rest.losses == full.losses  # bitwise
    a = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "full")[-1][1])
    b = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "split")[-1][1])
    assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    da, db = a.optimizer["discriminator"]["state"], b.optimizer["discriminator"]["state"]
    assert da.keys() == db.keys() and all(torch.equal(da[k]["exp_avg"], db[k]["exp_avg"]) for k in da)

    tensors, meta = read_safetensors(full.adapter_path)
    assert not any("discriminator" in k or "heads" in k for k in tensors)  # never exported
    assert meta["lcm_lora.adversarial_weight"] == "0.1" and meta["lcm_lora.adversarial_real"] == "target"
    assert meta["lcm_lora.objective"] == "pcm" and "adversarial" in meta["ss_training_comment"]
    capsys.readouterr()
    assert cli_main(["inspect", "--allow-unknown-arch", str(full.adapter_path)]) == 0
    out = capsys.readouterr().out
    assert "adversarial:   PCM adversarial consistency loss, weight 0.1, real samples: target" in out
    assert cli_main(["inspect", "--json", "--allow-unknown-arch", str(full.adapter_path)]) == 0
    assert json.loads(capsys.readouterr().out)["adversarial"] == {"weight": 0.1, "real": "target"}


# ------------------------------------------------------------------------------------------- memory estimate
def _heads_closed_form(channels, heads, kernel):
    """Parameters of the reference's heads: per head two k×k convs C→C (+bias), two GroupNorms (2C each), a
    1×1 conv C→1 (+bias): 2k²C² + 7C + 1."""
    return sum(heads * (2 * kernel**2 * c * c + 7 * c + 1) for c in channels)


@pytest.mark.parametrize("arch,channels,heads,kernel", [
    ("sd1", [320, 640, 1280, 1280, 1280, 1280, 1280, 640, 320], 4, 3),  # discriminator_sd15.py's defaults
    ("sdxl", [320, 640, 1280, 1280], 1, 1),  # discriminator_sdxl.py's defaults
])
def test_discriminator_heads_of_full_size_unets_match_the_references_layout(arch, channels, heads, kernel):
    from lcm_lora.lcm_core.model_configs import build_unet
    from lcm_lora.training.adversarial import Discriminator

    unet = build_unet(arch, device="meta")
    with torch.device("meta"):
        disc = Discriminator(unet)
    assert sum(p.numel() for p in disc.parameters()) == _heads_closed_form(channels, heads, kernel)


def test_memory_estimate_counts_the_discriminator_heads_and_their_adam_states(assets):
    from lcm_lora.training.memory_estimate import estimate_memory

    base = _overrides(assets, **{"lcd.objective": "pcm"})
    off = estimate_memory(load_config(TINY, base), "cuda", activations=False)
    on = estimate_memory(load_config(TINY, base + ["lcd.adversarial_weight=0.1"]), "cuda", activations=False)
    expected = 12 * _heads_closed_form([16, 32, 32, 32, 16], 4, 3)  # float32 weights + AdamW's two float32 moments
    assert on.get("discriminator heads + optimizer states") == expected
    assert on.total - off.total == expected and off.get("discriminator heads + optimizer states") == 0


def test_memory_simulation_runs_the_configured_teacher_and_both_adversarial_steps(assets):
    """The simulated step calls the UNet as the trainer does: teacher at 2B with solver guidance, at B without;
    with the adversarial loss the D step (student, target, fake and real feature passes) and the G step."""
    from lcm_lora.training.adversarial import Discriminator
    from lcm_lora.training.memory_estimate import _lora_unet, _model_parts, simulate_step

    cfg = load_config(TINY, _overrides(assets, **{"lcd.objective": "pcm", "lora.targets": "[to_q]"}))
    unet, _ = _lora_unet(_model_parts(cfg), torch.float32, cfg)
    calls = []
    unet.register_forward_pre_hook(lambda m, args, kwargs: calls.append(int(args[0].shape[0])), with_kwargs=True)
    peaks = {}
    for sg in (True, False):
        calls.clear()
        peaks[sg] = simulate_step(unet, 3, (8, 8), 7, None, None, "cpu", objective="pcm", solver_guidance=sg)
        assert calls == ([6, 3, 3] if sg else [3, 3, 3])  # teacher, student, target
    assert peaks[False] <= peaks[True]
    with torch.device("meta"):
        disc = Discriminator(unet)
    calls.clear()
    adv_peak = simulate_step(unet, 3, (8, 8), 7, None, None, "cpu", objective="pcm", discriminator=disc)
    # D step: teacher, student, target, D(fake), D(real); G step: teacher, student, target, D(fake)
    assert calls == [6, 3, 3, 3, 3, 6, 3, 3, 3]
    assert adv_peak > peaks[True]


@pytest.mark.slow
@pytest.mark.parametrize("settings", [
    ["lcd.objective=pcm", "lcd.adversarial_weight=0.1"],
    ["lcd.objective=pcm", "lcd.adversarial_weight=0.1", "lcd.solver_guidance=false"],
])
def test_adversarial_memory_estimate_within_15_percent_of_measured_peak(tmp_path, settings):
    """As ``test_train_memory_estimate.py``: fresh processes measure the peak over a D and a G step
    (``benchmarks/trainer/memory_check.py --set ...``)."""
    import subprocess
    import sys

    out = tmp_path / "rows.json"
    args = [a for s in settings for a in ("--set", s)]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "trainer" / "memory_check.py"), "--model", "tiny",
                           "--points", "32:1,64:4", *args, "--json", str(out), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2
    for row in rows:
        assert row["components_mib"]["discriminator heads + optimizer states"] > 0
        assert abs(row["error"]) <= 0.15, row


def test_shipped_adversarial_config_follows_the_reference_launch_script():
    """``configs/pcm_adv_sd15.yaml``: PCM's ``train_pcm_lora_sd15.sh`` adversarial run (``--multiphase=2
    --adv_weight=0.1 --adv_lr=1e-5 --max_train_steps=10000``)."""
    cfg = load_config(ROOT / "configs" / "pcm_adv_sd15.yaml")
    assert (cfg.lcd.objective, cfg.lcd.phases, cfg.lcd.adversarial_weight, cfg.lcd.adversarial_lr) == ("pcm", 2, 0.1, 1e-5)
    assert cfg.lcd.adversarial_real == "target" and cfg.train.max_steps == 10000 and cfg.optim.learning_rate == 5e-6
