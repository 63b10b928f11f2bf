"""Odd but possible CLI and config input (a review of stop 37): each gets exit 2 and one line naming the file
and the problem, valid JSON, or the value the user typed — never a traceback or a silently changed value."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.training.config import load_config, read_config_file
from test_cli import SD1_MODULES, dense_delta, kohya_tensors, run_cli, sd1_file, sd1_file_b  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override,key,expected", [
    ("validation.prompts=a photo #1 of a cat", "prompts", ["a photo #1 of a cat"]),  # YAML read '#1…' as a comment
    ("validation.prompts=#hashtag art", "prompts", ["#hashtag art"]),  # … and this as null
    ("validation.prompts=yes", "prompts", ["yes"]),  # … and this as a boolean (refused)
    ("validation.prompts=a cat, a dog", "prompts", ["a cat", "a dog"]),
    ("validation.prompts=[a cat, a dog]", "prompts", ["a cat", "a dog"]),
    ("data.cache_latents=1", "cache_latents", True),  # YAML's integer 1 was refused for a boolean key
    ("data.cache_latents=off", "cache_latents", False),
    ("max_steps=1_000", "max_steps", 1000),
    ("learning_rate=1e-4", "learning_rate", 1e-4),
])
def test_override_values_are_read_as_typed(override, key, expected):
    cfg = load_config({}, [override])
    section = {"prompts": cfg.validation, "cache_latents": cfg.data, "max_steps": cfg.train,
               "learning_rate": cfg.optim}[key]
    assert getattr(section, key) == expected


@pytest.mark.parametrize("override,key", [
    ("learning_rate=inf", "optim.learning_rate"), ("learning_rate=1e999", "optim.learning_rate"),
    ("lora.alpha=inf", "lora.alpha"), ("lcd.w_max=inf", "lcd.w_max"), ("lcd.huber_c=inf", "lcd.huber_c"),
    ("train.seed=99999999999999999999999", "train.seed"), ("train.seed=-1", "train.seed"),
    ("train.device=banana", "train.device"), ("train.device=cuda:x", "train.device"),
])
def test_values_the_run_cannot_use_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config({}, [override])


def test_config_files_that_are_not_utf8_or_not_sections(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("train:\n  max_steps: 3 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config_file(bad)
    for text in ("0", "[]", "false", "just text"):
        f = tmp_path / "scalar.yaml"
        f.write_text(text)
        with pytest.raises(ConfigError, match="sections"):
            read_config_file(f)
    (tmp_path / "empty.yaml").write_text("")
    assert read_config_file(tmp_path / "empty.yaml") == {}


def test_cli_config_errors_are_one_line(capsys, tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"train:\n  max_steps: 3 # caf\xe9\n")
    code, _, err = run_cli(capsys, "train", "--config", str(bad), "--output", str(tmp_path / "run"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {bad}: is not UTF-8 text ("), err
    assert lines[0].endswith("save the config as UTF-8") and not (tmp_path / "run").exists()


def _messages(err: str) -> list[str]:
    """stderr without the progress bar's lines."""
    return [line for line in err.strip().splitlines() if "%|" not in line]


def test_weights_beyond_float32_are_refused_naming_the_file(capsys, tmp_path, sd1_file, sd1_file_b):
    for method in ("svd", "concat"):
        code, _, err = run_cli(capsys, "merge", f"{sd1_file}:1e39", f"{sd1_file_b}:1", "--method", method,
                               "-o", str(tmp_path / f"m_{method}.safetensors"))
        assert code == 2 and len(_messages(err)) == 1 and "float32" in err and str(sd1_file) in err, err
    # representable weights whose ΔW still fits float32 (max |ΔW| ≈ 5e37): λ used to go all into the up factors,
    # which overflowed; it is split between both factors (merge_factors.stack_weighted), so the merge is exact
    out = tmp_path / "m_big.safetensors"
    code, _, err = run_cli(capsys, "merge", f"{sd1_file}:3e38", f"{sd1_file_b}:3e38", "--method", "concat", "-o", str(out))
    assert code == 0, err
    a, b, merged = load_file(sd1_file), load_file(sd1_file_b), load_file(out)
    for name in SD1_MODULES:
        expected = 3e38 * (dense_delta(a, name).double() + dense_delta(b, name).double())
        got = merged[f"{name}.lora_up.weight"].double().flatten(1) @ merged[f"{name}.lora_down.weight"].double().flatten(1)
        assert float(expected.abs().max()) < 3.4e38 and (got.reshape(expected.shape) - expected).norm() / expected.norm() < 1e-6


def test_fuse_refuses_an_overflowing_fp16_checkpoint(capsys, tmp_path):
    to_k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    sd1_file = tmp_path / "to_k.safetensors"
    save_file(kohya_tensors({to_k: SD1_MODULES[to_k]}, rank=4, alpha=4.0, seed=5), sd1_file)
    g = torch.Generator().manual_seed(0)
    ckpt = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
            torch.randn(320, 768, generator=g).half()}
    base, out = tmp_path / "base16.safetensors", tmp_path / "f16.safetensors"
    save_file(ckpt, base)
    code, _, err = run_cli(capsys, "fuse", str(base), f"{sd1_file}:1e6", "--arch", "sd1", "-o", str(out))
    assert code == 2 and "float16's range" in err and "attn2.to_k" in err and len(_messages(err)) == 1, err
    assert not out.exists()
    code, _, err = run_cli(capsys, "fuse", str(base), f"{sd1_file}:1e39", "--arch", "sd1", "-o", str(out))
    assert code == 2 and "float32" in err, err
    code, _, err = run_cli(capsys, "fuse", str(base), f"{sd1_file}:0.5", "--arch", "sd1", "-o", str(out))
    assert code == 0, err
    assert torch.isfinite(next(iter(load_file(out).values())).float()).all()


def test_fuse_refuses_an_overflowing_fp16_bias_diff(capsys, tmp_path):
    """A LyCORIS full module's bias diff (diff_b) is checked as the weights are: Inf in fp16 is refused, nothing written."""
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    full = tmp_path / "full.safetensors"
    save_file({f"{conv}.diff": torch.full((320, 320, 3, 3), 1e-6), f"{conv}.diff_b": torch.ones(320)}, full)
    prefix = "model.diffusion_model.input_blocks.1.0.in_layers.2"
    base, out = tmp_path / "base16.safetensors", tmp_path / "f16.safetensors"
    save_file({f"{prefix}.weight": torch.zeros(320, 320, 3, 3).half(), f"{prefix}.bias": torch.zeros(320).half()}, base)
    code, _, err = run_cli(capsys, "fuse", str(base), f"{full}:100000", "--arch", "sd1", "-o", str(out))
    assert code == 2 and "float16's range" in err and f"{prefix}.bias" in err and len(_messages(err)) == 1, err
    assert not out.exists()
    code, _, err = run_cli(capsys, "fuse", str(base), f"{full}:2", "--arch", "sd1", "-o", str(out))
    assert code == 0, err
    assert torch.equal(load_file(out)[f"{prefix}.bias"], torch.full((320,), 2.0).half())


def test_inspect_json_stays_valid_with_a_nonfinite_metadata_number(capsys, tmp_path):
    path = tmp_path / "adv.safetensors"
    save_file(kohya_tensors(SD1_MODULES, rank=4, alpha=4.0, seed=3), path,
              metadata={"lcm_lora.objective": "pcm", "lcm_lora.adversarial_weight": "nan"})
    code, out, err = run_cli(capsys, "inspect", str(path), "--json")
    assert code == 0, err
    info = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert info["adversarial"]["weight"] == "nan"


def test_demo_export_onto_a_file_is_one_line(capsys, tmp_path):
    target = tmp_path / "a.safetensors"
    target.write_bytes(b"x")
    code, _, err = run_cli(capsys, "demo", "--export", str(target))
    assert code == 2 and err.strip() == f"error: {target}: is a file, not a folder: give --export a folder", err
    assert target.read_bytes() == b"x"


def test_an_output_in_a_missing_folder_is_refused_before_any_work(capsys, tmp_path, sd1_file, sd1_file_b, monkeypatch):
    """merge / convert / fuse check the output's folder first (it used to fail only at write time, after the work)."""
    import lcm_lora.cli.adapter_commands as commands

    monkeypatch.setattr(commands, "_read", lambda *a, **k: pytest.fail("read the inputs before checking the output"))
    out = tmp_path / "missing" / "out.safetensors"
    for argv in (["merge", f"{sd1_file}:1", f"{sd1_file_b}:1", "-o", str(out)],
                 ["convert", str(sd1_file), "--to", "diffusers", "-o", str(out)],
                 ["fuse", str(sd1_file), f"{sd1_file_b}:1", "-o", str(out)]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and _messages(err) == [f"error: {out}: output folder {out.parent} does not exist"], (argv, err)


def _raw_safetensors(path, tensors: dict, metadata_json: str) -> None:
    """A .safetensors file whose metadata is given as raw JSON text (e.g. an escaped lone surrogate)."""
    import struct

    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        data = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header)[:-1] + ', "__metadata__": ' + metadata_json + "}"
    raw = text.encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_inspect_output_problems_are_one_line_errors(capsys, tmp_path, sd1_file, monkeypatch):
    """A metadata value with a lone surrogate is printed escaped (it was a UnicodeEncodeError traceback); stdout on a
    full disk or closed is an error line, not a traceback; an unreadable adapter folder is one line too."""
    import subprocess
    import sys

    odd = tmp_path / "odd.safetensors"
    _raw_safetensors(odd, load_file(sd1_file), '{"note": "bad \\ud800 surrogate", "two": "a\\nb"}')
    code, out, err = run_cli(capsys, "inspect", str(odd))
    assert code == 0, err
    assert "  note: bad \\ud800 surrogate" in out and "  two: a\\nb" in out
    cli = [sys.executable, "-m", "lcm_lora.cli.main", "inspect", str(sd1_file)]
    with open("/dev/full", "w") as full:
        done = subprocess.run(cli, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == ["error: standard output: No space left on device"]
    closed = subprocess.run(["sh", "-c", " ".join(f"'{a}'" for a in cli) + " >&-"], capture_output=True, text=True,
                            timeout=120)
    assert "Traceback" not in closed.stderr, closed.stderr
    folder = tmp_path / "peft"
    folder.mkdir()
    real_is_file = Path.is_file

    def denied(path, *args, **kwargs):  # as for a folder without search permission (chmod 000; root bypasses it)
        if path.parent == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_file(path, *args, **kwargs)

    monkeypatch.setattr(Path, "is_file", denied)
    code, _, err = run_cli(capsys, "inspect", str(folder))
    assert code == 2 and _messages(err) == [f"error: {folder}: cannot read the folder: Permission denied"], err


def test_dora_magnitudes_count_as_parameters(capsys, tmp_path):
    """inspect's parameter count is every trained tensor: LoRA + DoRA left out the magnitudes (LoHa + DoRA did not)."""
    K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{K}.lora_down.weight": torch.randn(4, 320), f"{K}.lora_up.weight": torch.randn(320, 4),
               f"{K}.dora_scale": torch.rand(320, 1)}
    path = tmp_path / "dora.safetensors"
    save_file(tensors, path)
    code, out, err = run_cli(capsys, "inspect", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["parameters"] == sum(t.numel() for t in tensors.values())


def test_merge_fuse_refuses_to_and_force_never_replaces_a_foreign_folder(capsys, tmp_path, sd1_file, sd1_file_b):
    """--method fuse writes a checkpoint: a --to (e.g. peft) was silently ignored. --force with --to peft replaces
    the whole output folder: a folder holding anything but a peft adapter is refused (its files were deleted)."""
    code, _, err = run_cli(capsys, "merge", f"{sd1_file}:1", "--method", "fuse", "--base", str(sd1_file), "--to", "peft",
                           "-o", str(tmp_path / "x"))
    assert code == 2 and "--to does not apply to --method fuse" in err, err
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "keep.txt").write_text("keep")
    (mine / "adapter_config.json").write_text("{}")
    code, _, err = run_cli(capsys, "merge", f"{sd1_file}:1", f"{sd1_file_b}:1", "--to", "peft", "--force",
                           "-o", str(mine))
    assert code == 2 and "holding more than a peft adapter (e.g. sub)" in err, err
    assert (mine / "sub" / "keep.txt").read_text() == "keep"
    code, _, err = run_cli(capsys, "merge", f"{sd1_file}:1", f"{sd1_file_b}:1", "--to", "peft", "-o", str(tmp_path / "p"))
    assert code == 0, err
    code, _, err = run_cli(capsys, "merge", f"{sd1_file}:0.5", f"{sd1_file_b}:1", "--to", "peft", "--force",
                           "-o", str(tmp_path / "p"))
    assert code == 0, err  # an adapter folder it wrote is replaced
