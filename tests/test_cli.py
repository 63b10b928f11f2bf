"""`lcm-lora inspect | convert | merge | fuse`, checked against the raw tensors of the files
(read with `safetensors` directly, ΔW formed densely in the test) and against the exact
error contract: exit 2, one line `error: <file>: <problem>`, no traceback.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lcm_lora.cli.main import main

# Two SD1.5 modules (attn2.to_k is 320×768 only in SD1.x) and one conv 3×3 (LoCon).
SD1_MODULES = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (320, 768),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (320, 320),
    "lora_unet_down_blocks_0_resnets_0_conv1": (320, 320, 3, 3),
}
SDXL_MODULES = {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (640, 2048)}


def kohya_tensors(modules: dict, rank: int, alpha: float, seed: int) -> dict[str, torch.Tensor]:
    """A kohya LoRA written by hand (independent of our writer)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in modules.items():
        out_f, in_f = shape[0], shape[1]
        kernel = tuple(shape[2:])
        out[f"{name}.lora_down.weight"] = torch.randn(rank, in_f, *kernel, generator=g) * 0.1
        out[f"{name}.lora_up.weight"] = torch.randn(out_f, rank, *((1, 1) if kernel else ()), generator=g) * 0.1
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def dense_delta(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    down = tensors[f"{name}.lora_down.weight"].double()
    up = tensors[f"{name}.lora_up.weight"].double()
    rank = down.shape[0]
    alpha = float(tensors[f"{name}.alpha"]) if f"{name}.alpha" in tensors else rank
    delta = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
    return (alpha / rank) * delta.reshape(up.shape[0], *down.shape[1:])


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def sd1_file(tmp_path) -> Path:
    path = tmp_path / "style.safetensors"
    save_file(kohya_tensors(SD1_MODULES, rank=4, alpha=2.0, seed=1), path, metadata={"ss_network_dim": "4"})
    return path


@pytest.fixture
def sd1_file_b(tmp_path) -> Path:
    path = tmp_path / "lcm.safetensors"
    save_file(kohya_tensors(SD1_MODULES, rank=8, alpha=8.0, seed=2), path)
    return path


# --------------------------------------------------------------------------- inspect / convert


def test_inspect_json_reports_what_the_file_holds(capsys, sd1_file):
    code, out, err = run_cli(capsys, "inspect", str(sd1_file), "--json")
    assert code == 0, err
    info = json.loads(out)
    raw = load_file(sd1_file)
    assert info["modules"] == sum(k.endswith(".lora_down.weight") for k in raw)
    assert info["ranks"] == sorted({raw[k].shape[0] for k in raw if k.endswith("lora_down.weight")})
    assert info["alphas"] == [2.0]
    assert info["format"] == "kohya"
    assert info["architecture"] == "sd1"
    assert info["dtypes"] == ["float32"]
    assert info["parameters"] == sum(t.numel() for k, t in raw.items() if not k.endswith(".alpha"))
    assert info["size_bytes"] == sd1_file.stat().st_size
    assert info["metadata"]["ss_network_dim"] == "4"
    code, text, _ = run_cli(capsys, "inspect", str(sd1_file))
    assert code == 0 and "architecture:  sd1" in text and "ranks:         4" in text


@pytest.mark.parametrize("fmt", ["diffusers", "peft", "comfy", "kohya"])
def test_convert_round_trip_is_exact(capsys, tmp_path, sd1_file, fmt):
    converted = tmp_path / f"converted_{fmt}"
    back = tmp_path / "back.safetensors"
    assert run_cli(capsys, "convert", str(sd1_file), "--to", fmt, "-o", str(converted))[0] == 0
    code, _, err = run_cli(capsys, "convert", str(converted), "--to", "kohya", "-o", str(back))
    assert code == 0, err
    original, roundtrip = load_file(sd1_file), load_file(back)
    for name in SD1_MODULES:
        torch.testing.assert_close(dense_delta(roundtrip, name), dense_delta(original, name), rtol=0, atol=1e-12)


def test_outputs_are_never_overwritten_without_force(capsys, tmp_path, sd1_file):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    code, _, err = run_cli(capsys, "convert", str(sd1_file), "--to", "kohya", "-o", str(out))
    assert code == 2 and "already exists" in err and out.read_bytes() == b"precious"
    assert run_cli(capsys, "convert", str(sd1_file), "--to", "kohya", "-o", str(out), "--force")[0] == 0
    assert set(load_file(out)) == set(load_file(sd1_file))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


# --------------------------------------------------------------------------- merge


def test_merge_concat_equals_weighted_dense_sum(capsys, tmp_path, sd1_file, sd1_file_b):
    out = tmp_path / "merged.safetensors"
    code, text, err = run_cli(capsys, "merge", f"{sd1_file}:0.8", f"{sd1_file_b}:1.0", "--method", "concat",
                              "-o", str(out), "--json")
    assert code == 0, err
    report = json.loads(text)
    assert report["total_relative_error"] < 1e-6
    a, b, merged = load_file(sd1_file), load_file(sd1_file_b), load_file(out)
    for name in SD1_MODULES:
        expected = 0.8 * dense_delta(a, name) + 1.0 * dense_delta(b, name)
        got = dense_delta(merged, name)
        assert merged[f"{name}.lora_down.weight"].shape[0] == 4 + 8  # rank Σ r_i
        assert (got - expected).norm() / expected.norm() < 1e-6


def test_merge_svd_error_is_the_eckart_young_error(capsys, tmp_path, sd1_file, sd1_file_b):
    out = tmp_path / "merged.safetensors"
    code, text, err = run_cli(capsys, "merge", f"{sd1_file}:0.8", f"{sd1_file_b}:-0.5", "--method", "svd",
                              "--rank", "3", "-o", str(out), "--json")
    assert code == 0, err
    a, b = load_file(sd1_file), load_file(sd1_file_b)
    err_sq = norm_sq = 0.0
    for name in SD1_MODULES:
        dense = 0.8 * dense_delta(a, name) - 0.5 * dense_delta(b, name)
        s = torch.linalg.svdvals(dense.reshape(dense.shape[0], -1))
        err_sq += float((s[3:] ** 2).sum())
        norm_sq += float((s**2).sum())
    assert json.loads(text)["total_relative_error"] == pytest.approx((err_sq / norm_sq) ** 0.5, rel=1e-4)
    code, text, _ = run_cli(capsys, "merge", f"{sd1_file}:0.8", f"{sd1_file_b}:-0.5", "--method", "svd",
                            "--rank", "3", "-o", str(out), "--force")
    assert code == 0 and "relative error:" in text


# --------------------------------------------------------------------------- fuse


def test_fuse_adds_weighted_deltas_to_checkpoint_weights(capsys, tmp_path, sd1_file, sd1_file_b):
    g = torch.Generator().manual_seed(0)
    ckpt = {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.randn(320, 768, generator=g),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": torch.randn(320, 320, generator=g),
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": torch.randn(320, 320, 3, 3, generator=g),
        "model.diffusion_model.input_blocks.1.0.in_layers.2.bias": torch.randn(320, generator=g),
    }
    ckpt_path, out = tmp_path / "base.safetensors", tmp_path / "fused.safetensors"
    save_file(ckpt, ckpt_path)
    code, _, err = run_cli(capsys, "fuse", str(ckpt_path), f"{sd1_file}:0.8", f"{sd1_file_b}:1.0", "--arch", "sd1",
                           "-o", str(out))
    assert code == 0, err
    fused, a, b = load_file(out), load_file(sd1_file), load_file(sd1_file_b)
    pairs = {  # diffusers name (kohya) → LDM name, as in diffusers' convert_ldm_unet_checkpoint
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
        "lora_unet_down_blocks_0_resnets_0_conv1": "input_blocks.1.0.in_layers.2",
    }
    for kohya_name, ldm in pairs.items():
        key = f"model.diffusion_model.{ldm}.weight"
        expected = ckpt[key].double() + 0.8 * dense_delta(a, kohya_name) + dense_delta(b, kohya_name)
        torch.testing.assert_close(fused[key].double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused["model.diffusion_model.input_blocks.1.0.in_layers.2.bias"],
                               ckpt["model.diffusion_model.input_blocks.1.0.in_layers.2.bias"])


def test_fuse_refuses_an_adapter_of_another_architecture(capsys, tmp_path):
    ckpt_path, lora = tmp_path / "base.safetensors", tmp_path / "xl.safetensors"
    save_file({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768)},
              ckpt_path)
    save_file(kohya_tensors(SDXL_MODULES, 4, 4.0, seed=3), lora)
    code, _, err = run_cli(capsys, "fuse", str(ckpt_path), str(lora), "--arch", "sd1", "-o", str(tmp_path / "o.safetensors"))
    assert code == 2 and "sd1" in err and "sdxl" in err and str(lora) in err


# --------------------------------------------------------------------------- bad input


def _valid_bytes() -> bytes:
    tensors = kohya_tensors({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (320, 768)}, 4, 4.0, 9)
    from safetensors.torch import save

    return save(tensors)


def _with_header(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def _make_bad(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    if kind == "not_safetensors":
        path.write_bytes(b"this is a text file, not a LoRA\n" * 10)
    elif kind == "truncated":
        path.write_bytes(_valid_bytes()[:-100])
    elif kind == "bad_header_json":
        path.write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}" + b"\0" * 64)
    elif kind == "dtype_lie":  # declares F32 but the byte range only holds F16 data
        path.write_bytes(_with_header({"a": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 64]}}, b"\0" * 64))
    elif kind == "shape_lie":
        path.write_bytes(_with_header({"a": {"dtype": "F32", "shape": [400, 800], "data_offsets": [0, 64]}}, b"\0" * 64))
    elif kind == "missing_partner":
        t = kohya_tensors({name: (320, 768)}, 4, 4.0, 1)
        del t[f"{name}.lora_up.weight"]
        save_file(t, path)
    elif kind == "rank_mismatch":
        t = kohya_tensors({name: (320, 768)}, 4, 4.0, 1)
        t[f"{name}.lora_up.weight"] = torch.zeros(320, 8)
        save_file(t, path)
    elif kind == "nan":
        t = kohya_tensors({name: (320, 768)}, 4, 4.0, 1)
        t[f"{name}.lora_up.weight"][3, 1] = float("nan")
        save_file(t, path)
    elif kind == "inf":
        t = kohya_tensors({name: (320, 768)}, 4, 4.0, 1)
        t[f"{name}.lora_down.weight"][0, 0] = float("inf")
        save_file(t, path)
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "directory":
        path = tmp_path / "a_folder"
        path.mkdir()
    else:  # pragma: no cover
        raise ValueError(kind)
    return path


BAD_KINDS = ["not_safetensors", "truncated", "bad_header_json", "dtype_lie", "shape_lie", "missing_partner",
             "rank_mismatch", "nan", "inf", "empty_file", "directory"]


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("command", ["inspect", "convert", "merge"])
def test_bad_input_gives_one_error_line_and_exit_2(capsys, tmp_path, sd1_file, kind, command):
    bad = _make_bad(kind, tmp_path)
    out = tmp_path / "out.safetensors"
    argv = {
        "inspect": ["inspect", str(bad)],
        "convert": ["convert", str(bad), "--to", "diffusers", "-o", str(out)],
        "merge": ["merge", f"{sd1_file}:1.0", f"{bad}:0.5", "-o", str(out)],
    }[command]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {bad}: "), lines[0]
    assert len(lines[0]) > len(f"error: {bad}: ") + 5
    assert "Traceback" not in err
    assert not out.exists()


def test_merge_of_different_architectures_names_both(capsys, tmp_path, sd1_file):
    xl = tmp_path / "xl.safetensors"
    save_file(kohya_tensors(SDXL_MODULES, 4, 4.0, seed=3), xl)
    code, _, err = run_cli(capsys, "merge", f"{sd1_file}:0.8", f"{xl}:1.0", "-o", str(tmp_path / "m.safetensors"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: ") and "sd1" in lines[0] and "sdxl" in lines[0] and str(xl) in lines[0]


def test_bad_weight_and_missing_file(capsys, tmp_path, sd1_file):
    code, _, err = run_cli(capsys, "merge", f"{sd1_file}:heavy", "-o", str(tmp_path / "m.safetensors"))
    assert code == 2 and "heavy" in err and "Traceback" not in err
    missing = tmp_path / "nope.safetensors"
    code, _, err = run_cli(capsys, "inspect", str(missing))
    assert code == 2 and err.strip() == f"error: {missing}: no such file or folder"


def test_real_process_exit_code_and_debug_traceback(tmp_path):
    bad = _make_bad("truncated", tmp_path)
    script = Path(sys.executable).with_name("lcm-lora")
    plain = subprocess.run([str(script), "inspect", str(bad)], capture_output=True, text=True)
    assert plain.returncode == 2
    assert plain.stderr.startswith(f"error: {bad}: ") and "Traceback" not in plain.stderr
    debug = subprocess.run([str(script), "--debug", "inspect", str(bad)], capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_merge_keeps_the_tcd_recipe_of_an_input(capsys, tmp_path, sd1_file):
    """`lcm-lora merge style + TCD adapter` writes the TCD recipe into the file (the loader's auto samples it as TCD)."""
    from lcm_lora.lcm_core.lora import read_adapter
    from lcm_lora.lcm_core.sampling_recipe import read_recipe, recipe_for_objective

    tcd = tmp_path / "tcd.safetensors"
    recipe = recipe_for_objective("tcd", w_range=(3.0, 13.0), gamma=0.3)
    save_file(kohya_tensors(SD1_MODULES, rank=8, alpha=8.0, seed=2), tcd, metadata=recipe.to_metadata())
    for method in ("concat", "svd"):
        out = tmp_path / f"merged_{method}.safetensors"
        code, text, err = run_cli(capsys, "merge", f"{sd1_file}:0.8", f"{tcd}:1.0", "--method", method, "-o", str(out))
        assert code == 0, err
        assert "sampling recipe: tcd" in text
        assert read_recipe(read_adapter(out).metadata) == recipe
