"""``benchmarks/demo_quality/augmented_bases.py``: the base-weight swap around ``TrainingSession.step``.

On a tiny diffusers UNet with the trainer's own LoRA layers: a swapped step sees exactly one of the given state
dicts in every frozen weight (and the LoRA untouched), the teacher's weights come back bit for bit afterwards (also
when the step raises), the share of swapped steps follows ``prob``, and the class is restored on exit.
"""
import importlib.util
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from lcm_lora.training import trainer
from lcm_lora.training.student import add_lora
from lcm_lora.training.tiny_models import tiny_unet_config

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("augmented_bases", ROOT / "benchmarks/demo_quality/augmented_bases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _augmented_bases():
    return _module().augmented_bases


class _Session:
    def __init__(self, unet):
        self.unet = unet


def _unet_with_lora(seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config())
    plain = {k: v.clone() for k, v in unet.state_dict().items()}
    add_lora(unet, 4, 4, 0.0, None)
    return unet, plain


def _frozen(unet):
    return {n.replace(".base_layer", ""): p.detach().clone() for n, p in unet.named_parameters() if "lora_" not in n}


def _lora(unet):
    return {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n}


def test_swapped_step_sees_a_state_and_restores_the_teacher(monkeypatch):
    unet, teacher = _unet_with_lora(0)
    others = [_unet_with_lora(s)[1] for s in (1, 2)]
    seen = []

    def recording_step(self):
        seen.append((_frozen(self.unet), _lora(self.unet)))
        return 0.5

    monkeypatch.setattr(trainer.TrainingSession, "step", recording_step)
    lora_before = _lora(unet)
    with _augmented_bases()(others, 1.0, seed=0):
        session = _Session(unet)
        for _ in range(6):
            assert trainer.TrainingSession.step(session) == 0.5
            after = _frozen(unet)
            assert all(torch.equal(after[k], teacher[k]) for k in after)  # teacher back, bit for bit
    assert trainer.TrainingSession.step is recording_step  # unpatched on exit
    used = set()
    for frozen, lora in seen:
        match = [i for i, o in enumerate(others) if all(torch.equal(frozen[k], o[k]) for k in frozen)]
        assert len(match) == 1
        used.add(match[0])
        assert all(torch.equal(lora[k], lora_before[k]) for k in lora)
    assert used == {0, 1}  # both drawn in six steps (seed 0)


def test_share_of_swapped_steps_and_restore_on_error(monkeypatch):
    unet, teacher = _unet_with_lora(0)
    other = _unet_with_lora(1)[1]
    key = next(iter(_frozen(unet)))
    swapped = []

    def step(self):
        swapped.append(not torch.equal(_frozen(self.unet)[key], teacher[key]))
        return 0.0

    monkeypatch.setattr(trainer.TrainingSession, "step", step)
    with _augmented_bases()([other], 0.25, seed=3):
        for _ in range(400):
            trainer.TrainingSession.step(_Session(unet))
    assert 0.18 < sum(swapped) / len(swapped) < 0.32
    with _augmented_bases()([other], 0.0, seed=3):
        trainer.TrainingSession.step(_Session(unet))
    assert not swapped[-1]

    def failing(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer.TrainingSession, "step", failing)
    with _augmented_bases()([other], 1.0, seed=0), pytest.raises(RuntimeError):
        trainer.TrainingSession.step(_Session(unet))
    assert all(torch.equal(v, teacher[k]) for k, v in _frozen(unet).items())


def test_styled_data_folder_is_the_finetunes_own_images(tmp_path):
    """The oracle's data: every PNG through ``apply_style`` (here bold: a plus-shaped max filter, checked against
    numpy's own 3×3 max over the plus), captions copied, nothing else changed; a second call reuses the folder."""
    import numpy as np
    from PIL import Image

    src = tmp_path / "data"
    src.mkdir()
    rng = np.random.default_rng(0)
    images = {f"{i:04d}_{i}.png": (rng.random((16, 16)) < 0.15).astype(np.uint8) * rng.integers(60, 256, (16, 16), dtype=np.uint8)
              for i in range(3)}
    for name, img in images.items():
        Image.fromarray(img, mode="L").save(src / name)
    (src / "metadata.jsonl").write_text("".join(f'{{"file_name": "{n}", "text": "a digit"}}\n' for n in images))
    out = _module().styled_data_folder(src, tmp_path / "work", "bold")
    assert out != src and (out / "metadata.jsonl").read_text() == (src / "metadata.jsonl").read_text()
    for name, img in images.items():
        p = np.pad(img, 1)
        plus = np.stack([p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]).max(0)
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), plus)
    assert sorted(x.name for x in out.iterdir()) == sorted([*images, "metadata.jsonl"])
    (out / "0000_0.png").unlink()  # cached by its metadata file: not rebuilt
    assert _module().styled_data_folder(src, tmp_path / "work", "bold") == out and not (out / "0000_0.png").exists()


def test_student_cfg_predictions_distil_the_students_own_cfg():
    """``student_cfg_predictions``: the student's side is the PCM map of its CFG-combined ε at g = 1 + ω (computed
    here from two separate passes and the unpatched ``LcdLoss.consistency``); the target's side the same on the
    guided teacher's DDIM step; at ω = 0 both equal the unpatched loss's conditional predictions; the patch is
    removed on exit."""
    from lcm_lora.training.ddim_solver import DDIMSolver
    from lcm_lora.training.lcd_step import LcdLoss, LcdRandomness
    from lcm_lora.training.phased import pcm_end_timesteps
    from lcm_lora.training.teacher_common import sd_noise_scheduler

    gen = torch.Generator().manual_seed(0)
    weights = {name: torch.randn(4, 4, generator=gen) * 0.3 for name in ("student", "teacher", "target")}

    def model(name):  # ε = a 1×1 "conv" of x plus the conditioning (a per-channel bias): affine, cond-dependent
        return lambda x, t, c: torch.einsum("oc,bchw->bohw", weights[name], x) + c[:, :, None, None] * (1 + t[:, None, None, None] / 1000)

    solver = DDIMSolver(sd_noise_scheduler().alphas_cumprod, 50)
    lcd = LcdLoss(solver, "epsilon", "l2", objective="pcm", solver_guidance=True)
    latents = torch.randn(3, 4, 8, 8, generator=gen)
    cond, uncond = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    index = torch.tensor([3, 20, 45])
    w = torch.tensor([0.5, 1.0, 3.0])
    rnd = LcdRandomness(index, torch.randn(latents.shape, generator=gen), w, pcm_end_timesteps(index, solver, 4))
    student, teacher, target = model("student"), model("teacher"), model("target")
    plain = lcd.predictions(student, teacher, target, latents, cond, uncond, rnd)
    with _module().student_cfg_predictions():
        got = lcd.predictions(student, teacher, target, latents, cond, uncond, rnd)
        zero = LcdRandomness(rnd.index, rnd.noise, torch.zeros(3), rnd.tcd_s)
        got_zero = lcd.predictions(student, teacher, target, latents, cond, uncond, zero)
    assert lcd.predictions(student, teacher, target, latents, cond, uncond, rnd)[0].equal(plain[0])

    start_t, end_t = solver.start_and_target_timesteps(index)
    noisy = solver.add_noise(latents, rnd.noise, start_t)
    g = (1 + w)[:, None, None, None]

    def cfg_map(m, x, t):
        eps = m(x, t, uncond) + g * (m(x, t, cond) - m(x, t, uncond))
        return lcd.consistency(eps, x, t, rnd.tcd_s)

    x_prev = lcd.teacher_step(teacher, noisy, start_t, index, w, cond, uncond)
    torch.testing.assert_close(got[0], cfg_map(student, noisy, start_t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], cfg_map(target, x_prev, end_t), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[0], plain[0], atol=1e-3)  # ω > 0: not the conditional prediction
    plain_zero = LcdLoss(solver, "epsilon", "l2", objective="pcm", solver_guidance=True).predictions(
        student, teacher, target, latents, cond, uncond, zero)
    torch.testing.assert_close(got_zero[0], plain_zero[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_zero[1], plain_zero[1], rtol=1e-5, atol=1e-5)

