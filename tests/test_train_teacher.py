"""Teacher loading: architecture of diffusers folders, single-file errors (no hub, clear messages)."""
from __future__ import annotations


import pytest
import torch

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.lcm_core.model_configs import ARCHITECTURES, build_unet
from lcm_lora.training.config import load_config
from lcm_lora.training.single_file import load_tokenizers, read_checkpoint
from lcm_lora.training.teacher import TeacherError, detect_folder_arch, load_teacher
from lcm_lora.training.tiny_models import build_tiny_teacher, tiny_unet_config


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_full_size_folder_configs_are_recognised(arch):
    assert detect_folder_arch(build_unet(arch).config) == arch


def test_tiny_folder_is_custom_and_arch_mismatch_is_named(tmp_path):
    from diffusers import UNet2DConditionModel

    from lcm_lora.lcm_core.errors import ArchitectureMismatchError

    assert detect_folder_arch(UNet2DConditionModel(**tiny_unet_config()).config) == "custom"
    folder = build_tiny_teacher(tmp_path / "t", block_out_channels=(16, 32))
    with pytest.raises(ArchitectureMismatchError, match="expected sdxl, found custom"):
        load_teacher(load_config({"teacher": {"path": str(folder), "arch": "sdxl"}}).teacher)
    teacher = load_teacher(load_config({"teacher": {"path": str(folder)}}).teacher)
    assert teacher.arch == "custom" and not any(p.requires_grad for p in teacher.unet.parameters())


def test_single_file_errors_name_the_file(tmp_path, monkeypatch):
    bad = tmp_path / "model.bin2"
    bad.write_bytes(b"x")
    with pytest.raises(TeacherError, match=r"model\.bin2: unknown checkpoint extension"):
        read_checkpoint(bad)
    corrupt = tmp_path / "model.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(TeacherError, match=r"model\.safetensors: cannot read checkpoint"):
        read_checkpoint(corrupt)
    pickled = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(2)}, "other": object()}, pickled)  # arbitrary objects: refused
    with pytest.raises(TeacherError, match=r"model\.ckpt: cannot read checkpoint"):
        read_checkpoint(pickled)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    with pytest.raises(ConfigError, match="teacher.tokenizer"):
        load_tokenizers("sd1", None, None, tmp_path / "ckpt.safetensors")


def test_tokenizer_from_a_folder_and_sdxl_second_tokenizer_pads_with_bang(tmp_path):
    from lcm_lora.training.tiny_models import write_tiny_tokenizer

    write_tiny_tokenizer(tmp_path / "tok", model_max_length=77)
    first, second = load_tokenizers("sdxl", str(tmp_path / "tok"), None, "x")
    assert first.pad_token == "<|endoftext|>" and second.pad_token == "!"
    ids = second(["a red circle"], padding="max_length", max_length=77).input_ids[0]
    assert len(ids) == 77 and ids[-1] == second.convert_tokens_to_ids("!")


def test_cache_identity_follows_what_the_checkpoint_does_not_hold(tmp_path):
    """The text / prompts-only caches are keyed by the teacher identity: for a single file it must change with the
    tokenizer folder, a forced arch and the prediction type (none of them is in the file), and for a folder with a
    prediction-type override."""
    import os

    from lcm_lora.training.single_file import single_file_identity, tokenizer_folders
    from lcm_lora.training.tiny_models import write_tiny_tokenizer

    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights")
    write_tiny_tokenizer(tmp_path / "tok_a", model_max_length=77)
    write_tiny_tokenizer(tmp_path / "tok_b", model_max_length=77)
    merges = tmp_path / "tok_b" / "merges.txt"
    merges.write_text(merges.read_text() + "\n")  # another tokenizer: same file names, other content
    folders_a = tokenizer_folders("sd1", str(tmp_path / "tok_a"), None, ckpt)
    assert folders_a == [tmp_path / "tok_a"]
    assert tokenizer_folders("sdxl", str(tmp_path / "tok_a"), str(tmp_path / "tok_b"), ckpt) == [tmp_path / "tok_a", tmp_path / "tok_b"]
    base = single_file_identity(ckpt, "sd1", "epsilon", folders_a)
    assert base == single_file_identity(ckpt, "sd1", "epsilon", folders_a)
    assert base != single_file_identity(ckpt, "sd1", "epsilon", tokenizer_folders("sd1", str(tmp_path / "tok_b"), None, ckpt))
    assert base != single_file_identity(ckpt, "sd1", "v_prediction", folders_a)
    assert base != single_file_identity(ckpt, "sd2", "epsilon", folders_a)
    stat = ckpt.stat()
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))  # same size, edited within the same second
    assert base != single_file_identity(ckpt, "sd1", "epsilon", folders_a)

    folder = build_tiny_teacher(tmp_path / "t", block_out_channels=(16, 32))
    auto = load_teacher(load_config({"teacher": {"path": str(folder)}}).teacher).identity
    forced = load_teacher(load_config({"teacher": {"path": str(folder), "prediction_type": "v_prediction"}}).teacher).identity
    assert auto != forced
