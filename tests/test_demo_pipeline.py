"""The demo's stages wired to the real trainer and merge code, on a tiny random teacher (seconds)."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from lcm_lora.demo import run as R
from lcm_lora.demo.evaluate import load_teacher
from lcm_lora.demo.fused_unet import unet_with
from lcm_lora.demo.style_lora import StyleLoraSettings
from lcm_lora.demo.teacher_samplers import steps_text


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from lcm_lora.training.tiny_models import build_tiny_teacher

    return build_tiny_teacher(tmp_path_factory.mktemp("t") / "teacher", image_channels=1, image_size=16, with_vae=False)


def test_exported_data_is_the_train_split(tmp_path):
    from PIL import Image

    from lcm_lora.demo.dataset import load_digit_images, split_indices, to_uint8

    cfg = R.DemoConfig()
    folder = R.export_training_data(tmp_path, cfg)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    images, labels = load_digit_images(16)
    split = split_indices(labels, seed=0)
    assert len(rows) == len(split.train)
    for k in (0, len(rows) // 2, len(rows) - 1):
        png = torch.from_numpy(np.array(Image.open(folder / rows[k]["file_name"])))
        assert torch.equal(png, torch.from_numpy(to_uint8(images[split.train[k]:split.train[k] + 1])[0]))
        assert rows[k]["text"] == f"a handwritten digit {int(labels[split.train[k]])}"


def test_trainer_style_lora_merge_and_cache(tmp_path, tiny_teacher):
    torch.manual_seed(0)
    cfg = dataclasses.replace(R.DemoConfig(), lcm_overrides=("train.max_steps=2", "train.batch_size=4"),
                              style=StyleLoraSettings(steps=2, batch_size=4))
    data = R.export_training_data(tmp_path, cfg)
    lcm, info = R.distil_lcm_lora(tmp_path, cfg, tiny_teacher, data, progress=False)
    assert not info["cached"] and "train.max_steps=2" in info["overrides"]
    again, info2 = R.distil_lcm_lora(tmp_path, cfg, tiny_teacher, data, progress=False)
    assert info2["cached"] and set(again.modules) == set(lcm.modules)  # second run reuses the adapter

    teacher = load_teacher(tiny_teacher)
    style, cached = R.train_or_load_style(tmp_path, cfg, teacher, "tiny", progress=False)
    assert not cached and set(style.modules) == set(lcm.modules)  # same target modules as the LCM-LoRA
    assert R.train_or_load_style(tmp_path, cfg, teacher, "tiny", progress=False)[1]

    # fusing λ1·style + λ2·lcm equals fusing their concat merge (θ + Σ λ ΔW, checked on every weight)
    from lcm_lora.lcm_core.merge import merge_adapters

    merged, report = merge_adapters([style, lcm], [0.8, 1.0], method="concat", progress=False)
    a = unet_with(teacher.unet, [(style, 0.8), (lcm, 1.0)]).state_dict()
    b = unet_with(teacher.unet, [(merged, 1.0)]).state_dict()
    base = teacher.unet.state_dict()
    for k in base:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    key = next(iter(style.modules))[len("unet."):] + ".weight"
    delta = 0.8 * style.modules["unet." + key[:-7]].delta_weight() + 1.0 * lcm.modules["unet." + key[:-7]].delta_weight()
    torch.testing.assert_close(a[key] - base[key], delta.reshape(base[key].shape), atol=1e-5, rtol=1e-4)


def test_models_are_handed_over_next_to_the_report(tmp_path, tiny_teacher):
    """issue 17 item 7: OUT/models holds the teacher folder, the data and every adapter, readable by others."""
    import os
    import stat

    from lcm_lora.demo.export_models import export_models
    from lcm_lora.lcm_core.lora import read_adapter

    cfg = dataclasses.replace(R.DemoConfig(), lcm_overrides=("train.max_steps=1", "train.batch_size=2"))
    (tmp_path / "cache").mkdir()
    data = R.export_training_data(tmp_path / "cache", cfg)
    lcm, info = R.distil_lcm_lora(tmp_path / "cache", cfg, tiny_teacher, data, progress=False)
    teacher = load_teacher(tiny_teacher)
    ft = unet_with(teacher.unet, [(lcm, 0.5)])  # any UNet stands in for the fine-tune
    out = tmp_path / "out"
    out.mkdir()
    listing = export_models(out, tiny_teacher, data, {"lcm_lora.safetensors": (info["path"], "the LCM-LoRA")},
                            {"style_lora.safetensors": (lcm, "a style LoRA")}, ft)
    assert [m["path"] for m in listing] == ["models/teacher", "models/data", "models/lcm_lora.safetensors",
                                            "models/style_lora.safetensors", "models/finetune"]
    copied = load_teacher(out / "models" / "teacher").unet.state_dict()
    assert all(torch.equal(copied[k], v) for k, v in teacher.unet.state_dict().items())
    assert (out / "models" / "data" / "metadata.jsonl").read_bytes() == (data / "metadata.jsonl").read_bytes()
    assert (out / "models" / "lcm_lora.safetensors").read_bytes() == open(info["path"], "rb").read()
    assert set(read_adapter(out / "models" / "style_lora.safetensors").modules) == set(lcm.modules)
    ft2 = load_teacher(out / "models" / "finetune").unet.state_dict()
    for k, v in ft.state_dict().items():
        assert torch.equal(ft2[k], v), k
    for root, dirs, files in os.walk(out / "models"):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o755
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) == 0o644
    # a second run replaces the folder
    export_models(out, tiny_teacher, data, {}, {}, None)
    assert not (out / "models" / "finetune").exists()
    assert steps_text(1) == "1 step" and steps_text(4) == "4 steps"


def test_pcm_is_a_full_preset_flag_and_leaves_other_cache_keys_alone(tmp_path):
    """The full preset trains a PCM adapter, the fast one does not; adding it moves no cached teacher, LCM-LoRA or
    TCD adapter: their cache folders hash the config text, their own overrides and CACHE_VERSION, as before."""
    assert R.PRESETS["full"].pcm and not R.PRESETS["fast"].pcm
    full = R.PRESETS["full"]
    # PCM's normal-CFG recipe, sampled at the teacher's own CFG, its phase edges moved toward high noise
    assert full.pcm_overrides == ("lcd.objective=pcm", "lcd.solver_guidance=false", "data.caption_dropout=0.1",
                                  f"lcd.normal_cfg={full.guidance_scale:g}", "lcd.phase_starts=[0,15,30,41]")
    pcm_extra = list(full.pcm_overrides)
    teacher, data = tmp_path / "teacher-x", tmp_path / "data-y"
    config_text = (R.REPO_ROOT / "configs" / "tiny_cpu.yaml").read_text(encoding="utf-8")
    for preset in ("full", "fast"):
        cfg = R.PRESETS[preset]
        base = R.lcm_overrides(cfg, teacher, data)
        # the key as the demo computed it before the PCM adapter existed (an independent recomputation)
        before = {"lcm": R._key(config_text, base, "1"), "tcd": R._key(config_text, base + ["lcd.objective=tcd"], "1")}
        folders = {}
        for pcm in (True, False):
            c = dataclasses.replace(cfg, pcm=pcm)
            folders[pcm] = {k: R.adapter_cache_folder(tmp_path, c, teacher, data, k) for k in ("lcm", "tcd", "pcm")}
            assert folders[pcm]["lcm"] == tmp_path / f"lcm-{before['lcm']}"
            assert folders[pcm]["tcd"] == tmp_path / f"tcd-{before['tcd']}"
        assert folders[True] == folders[False]
        assert R.adapter_overrides(cfg, teacher, data, "pcm") == base + pcm_extra
        assert folders[True]["pcm"].name == "pcm-" + R._key(config_text, base + pcm_extra, "1")
    with pytest.raises(ValueError, match="adapter kind"):
        R.adapter_overrides(R.PRESETS["full"], teacher, data, "tscd")


def test_pcm_adapter_is_distilled_by_the_trainer_with_its_recipe(tmp_path, tiny_teacher):
    """``distil_pcm``: the LCM overrides plus ``lcd.objective=pcm``; the exported adapter carries the PCM recipe
    (objective, 4 phases) the demo samples by; cached like the other adapters."""
    from lcm_lora.lcm_core.phased_timesteps import phased_timesteps
    from lcm_lora.lcm_core.sampling_recipe import recipe_timesteps
    from lcm_lora.demo.student_sampling import phased_recipe

    cfg = dataclasses.replace(R.PRESETS["full"], lcm_overrides=("train.max_steps=1", "train.batch_size=2"))
    data = R.export_training_data(tmp_path, cfg)
    pcm, info = R.distil_pcm(tmp_path, cfg, tiny_teacher, data, progress=False)
    n = len(cfg.pcm_overrides)
    assert not info["cached"] and info["overrides"][-n:] == list(cfg.pcm_overrides) and info["seconds"] > 0
    assert info["overrides"][:-n] == [o for o in R.lcm_overrides(cfg, tiny_teacher, data)
                                      if not o.startswith(("teacher.path=", "data.path="))]
    recipe = phased_recipe(pcm)
    assert (recipe.objective, recipe.phases, recipe.gamma) == ("pcm", 4, 0.0)
    assert recipe.cfg == cfg.guidance_scale  # normal CFG: sampled with real CFG at the teacher's g
    # the moved edges, recorded in the adapter: edge = start·k − 1 on the 50-point grid (k 20), against the even
    # split's 999 / 739 / 499 / 239
    assert recipe.phase_starts == (0, 15, 30, 41)
    assert recipe_timesteps(recipe, 4) == phased_timesteps(4, 4, "pcm", starts=(0, 15, 30, 41)) == [999, 819, 599, 299]
    assert phased_timesteps(4, 4, "pcm") == [999, 739, 499, 239]
    assert R.distil_pcm(tmp_path, cfg, tiny_teacher, data, progress=False)[1]["cached"]
    assert not any(p.name.startswith(("lcm-", "tcd-")) for p in tmp_path.iterdir())  # trained nothing else
