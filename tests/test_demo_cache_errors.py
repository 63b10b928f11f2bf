"""A damaged entry of the demo's model cache is an error naming the file, what is wrong, and what to delete."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import lcm_lora.demo.run as R
from lcm_lora.demo.cache_errors import reading_cache_entry
from lcm_lora.demo.evaluate import build_instruments, load_teacher
from lcm_lora.lcm_core.errors import LcmLoraError


@pytest.fixture(scope="module")
def teacher_in_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    folder, _ = R.prepare_teacher(cache, R.PRESETS["fast"], False, False)
    return cache, folder, load_teacher(folder)


def _damaged(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((64).to_bytes(8, "little") + b"{not json")
    return path


def _advice_for(err, entry):
    text = str(err.value)
    assert f"delete {entry} (or pass another --cache-dir)" in text, text
    return text


def test_damaged_style_lora_and_fine_tune_name_the_entry(teacher_in_cache):
    cache, folder, teacher = teacher_in_cache
    cfg = R.PRESETS["fast"]
    style = _damaged(cache / f"style-{R._key(cfg.style.to_dict(), folder.name, R.CACHE_VERSION)}.safetensors")
    with pytest.raises(LcmLoraError) as err:
        R.train_or_load_style(cache, cfg, teacher, folder.name, False)
    text = _advice_for(err, style)
    assert text.startswith(f"{style}: ") and "header" in text and "cached style LoRA" in text

    ft = cache / f"finetune-{R._key(cfg.finetune.to_dict(), folder.name, R.CACHE_VERSION)}.safetensors"
    save_file({"not.a.unet.weight": torch.zeros(2)}, ft)  # a readable file that is no UNet state dict
    with pytest.raises(LcmLoraError) as err:
        R.finetune_or_load(cache, cfg, teacher, folder.name, False)
    text = _advice_for(err, ft)
    assert text.startswith(f"{ft}: does not fit the demo's model (") and "cached full fine-tune" in text


def test_damaged_adapter_names_its_cache_folder(teacher_in_cache, tmp_path):
    cache, folder, _ = teacher_in_cache
    cfg = R.PRESETS["fast"]
    data = tmp_path / "data"
    out = R.adapter_cache_folder(cache, cfg, folder, data, "tcd")
    adapter = _damaged(out / "tcd_lora.safetensors")
    with pytest.raises(LcmLoraError) as err:  # cached: no training starts
        R.distil_adapter(cache, cfg, folder, data, False, kind="tcd")
    text = _advice_for(err, out)
    assert text.startswith(f"{adapter}: ") and "cached TCD adapter" in text


def test_damaged_classifier_names_its_file(tmp_path):
    digit = _damaged(tmp_path / "digit_classifier_r16_s0.safetensors")
    _damaged(tmp_path / "style_classifier_bold_r16_s0.safetensors")
    with pytest.raises(LcmLoraError) as err:
        build_instruments(16, 0, "bold", cache_dir=tmp_path)
    assert "cached digit classifier" in _advice_for(err, digit)


def test_other_errors_pass_through_unchanged():
    with pytest.raises(ValueError, match="^plain$"):
        with reading_cache_entry("x", "y"):
            raise ValueError("plain")
