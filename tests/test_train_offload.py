"""Encoder offload (training/offload.py): with both caches on, the text encoders and the VAE encoder are
freed after caching, the VAE decoder comes to the device only to decode validation images, and the run
is unchanged — same losses, same validation images — compared with keeping everything resident."""
from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch

from lcm_lora.training.config import load_config
from lcm_lora.training.distributed import init_distributed
from lcm_lora.training.offload import EncodersReleased, decoder_on
from lcm_lora.training.trainer import TrainingSession, train
from tiny_training import tiny_teacher_and_data

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("offload")
    teacher, data = tiny_teacher_and_data(root, n=8, size=16, variant="sdxl")  # two text encoders + VAE
    return root, teacher, data


def _overrides(assets, cache_dir, **extra):
    root, teacher, data = assets
    base = {"teacher": teacher, "data": data, "max_steps": 4, "batch_size": 4, "lora.rank": 4, "lora.alpha": 4,
            "validation.every": 2, "validation.steps": "1,2", "checkpoint.every": 0, "logging.progress": "false",
            "data.cache_latents": "true", "data.cache_text": "true", "data.cache_dir": cache_dir}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_offload_frees_encoders_and_keeps_losses_and_validation_images(assets, tmp_path):
    root = assets[0]
    runs = {}
    for offload in (False, True):
        out = tmp_path / f"offload-{offload}"
        result = train(TINY, out, overrides=_overrides(assets, root / "cache", **{"train.offload_encoders": str(offload).lower()}),
                       progress=False)
        assert result.status == "finished"
        images = sorted((out / "validation").glob("*.png"))
        assert [p.name for p in images] == ["step-00000002.png", "step-00000004.png"]
        runs[offload] = (result.losses, [p.read_bytes() for p in images])
    assert runs[True][0] == runs[False][0]  # bitwise identical training
    assert runs[True][1] == runs[False][1]  # identical validation grids (cached prompt embeddings, decoder on demand)


def test_offloaded_modules_are_released(assets, tmp_path):
    root = assets[0]
    cfg = load_config(TINY, _overrides(assets, root / "cache2"))
    ctx = init_distributed("cpu")
    session = TrainingSession(cfg, tmp_path, ctx, progress=False)
    # watch the encoders from the moment they are loaded
    import lcm_lora.training.trainer as trainer_module

    refs = []
    real_load = trainer_module.load_teacher

    def spy(*args, **kwargs):
        teacher = real_load(*args, **kwargs)
        refs.extend(weakref.ref(m) for m in [*teacher.text_encoders, teacher.vae.encoder])
        return teacher

    trainer_module.load_teacher = spy
    try:
        session.setup()
    finally:
        trainer_module.load_teacher = real_load
    gc.collect()
    assert len(refs) == 3 and all(r() is None for r in refs)  # two text encoders and the VAE encoder are freed
    assert session.teacher.vae.decoder is not None and session.validation_text is not None
    with pytest.raises(EncodersReleased, match="offload_encoders"):
        session.teacher.encode_text(["a caption that was never cached"])
    with pytest.raises(EncodersReleased, match="latent cache"):
        session.teacher.encode_pixels(torch.zeros(1, 3, 16, 16))
    session.step()  # training needs neither


def test_no_offload_without_both_caches(assets, tmp_path):
    root = assets[0]
    cfg = load_config(TINY, _overrides(assets, root / "cache3", **{"data.cache_text": "false"}))
    session = TrainingSession(cfg, tmp_path, init_distributed("cpu"), progress=False).setup()
    assert len(session.teacher.text_encoders) == 2 and session.teacher.vae.encoder is not None
    assert not session.teacher.released


class _RecordingVae(torch.nn.Linear):
    def __init__(self):
        super().__init__(2, 2)
        self.moves = []

    def to(self, device, *args, **kwargs):  # records where the decoder is sent
        self.moves.append(str(device))
        return self


class _FakeTeacher:
    def __init__(self):
        self.vae = _RecordingVae()
        self.released = True


def test_decoder_is_on_the_accelerator_only_while_decoding():
    teacher = _FakeTeacher()
    with decoder_on(teacher, torch.device("cuda")):  # no CUDA needed: the move is recorded, not done
        assert teacher.vae.moves == ["cuda"]
    assert teacher.vae.moves == ["cuda", "cpu"]
    teacher = _FakeTeacher()
    with decoder_on(teacher, torch.device("cpu")):  # CPU training: nothing moves
        pass
    assert teacher.vae.moves == []
