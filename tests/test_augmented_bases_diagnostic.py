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


def _augmented_bases():
    spec = importlib.util.spec_from_file_location("augmented_bases", ROOT / "benchmarks/demo_quality/augmented_bases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.augmented_bases


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
