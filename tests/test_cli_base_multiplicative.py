"""`lcm-lora convert --base CKPT` and `lcm-lora merge --method svd --base CKPT` with DoRA and OFT adapters.

The base is the smallest single-file checkpoint ``--base`` accepts: it must name one architecture
from its own keys (``fuse_checkpoint.base_weights`` → ``detect_checkpoint_architecture``). A partial
UNet is refused (a UNet must be complete) and an SD1 text encoder alone is ambiguous with SDXL's
CLIP-L, so the test uses two SD2 OpenCLIP weights (1 MB-scale, random): the fused ``in_proj_weight``
(q/k/v rows; the adapter updates v_proj = rows 2048:3072) and ``out_proj.weight``.

References, independent of ``lcm_core``: the patched weight from ComfyUI's conventions —
DoRA: ``comfy.weight_adapter.base.weight_decompose`` (output-axis norm of the weight *before* the
update, strength blend), written out below from the file's tensors; OFT: ``lycoris.functional.diag_oft``
for (R − I)·W, with ComfyUI ``oft.py``'s strength (it scales R − I by the strength and the diff again,
so s²). The converted / merged LoRA's ΔW must be a best rank-k approximation of (patched − base):
same singular values and the Eckart–Young error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from lycoris_fixtures import kohya_name, make_lora, make_oft  # noqa: E402

from lcm_lora.cli.main import main as cli  # noqa: E402

diag_oft = pytest.importorskip("lycoris.functional.diag_oft")

PREFIX = "cond_stage_model.model.transformer.resblocks.0.attn."
MODULES = {"text_encoder.text_model.encoder.layers.0.self_attn.v_proj": (1024, 1024),
           "text_encoder.text_model.encoder.layers.0.self_attn.out_proj": (1024, 1024)}
RANK = 8


@pytest.fixture(autouse=True)
def one_thread():
    """Dense 1024² float64 SVDs (CLI and reference): one thread is ~4× faster than two on a loaded 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("base_mult")
    gen = torch.Generator().manual_seed(0)
    in_proj = torch.randn(3072, 1024, generator=gen) * 0.02
    out_proj = torch.randn(1024, 1024, generator=gen) * 0.02
    save_file({PREFIX + "in_proj_weight": in_proj.half(), PREFIX + "out_proj.weight": out_proj.half()},
              str(d / "sd2_te_part.safetensors"))
    base = {"text_encoder.text_model.encoder.layers.0.self_attn.v_proj": in_proj[2048:].half().float(),
            "text_encoder.text_model.encoder.layers.0.self_attn.out_proj": out_proj.half().float()}
    save_file(make_lora("sd2", MODULES, rank=4, alpha=2.0, seed=1, dora=True), str(d / "dora.safetensors"))
    save_file(make_oft("sd2", MODULES, block=8, alpha=0.5, seed=2), str(d / "oft.safetensors"))
    return d, base


def _dora_patched(sd, key, w, strength):
    """ComfyUI ``weight_decompose`` on the output axis (kohya DoRA, dora_scale (out, 1))."""
    name = kohya_name(key, "sd2")
    down, up = sd[f"{name}.lora_down.weight"].double(), sd[f"{name}.lora_up.weight"].double()
    scale = float(sd[f"{name}.alpha"]) / down.shape[0]
    m = sd[f"{name}.dora_scale"].double()
    calc = w + scale * (up @ down)
    norm = w.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps
    return w + strength * (calc * (m / norm) - w)


def _oft_patched(sd, key, w, strength):
    name = kohya_name(key, "sd2")
    diff = diag_oft.diff_weight(w.float(), sd[f"{name}.oft_blocks"].float(), None,
                                constraint=float(sd[f"{name}.alpha"]), backend="torch").double()
    return w + strength * strength * diff  # ComfyUI oft.py: (R·s − s·I)·W, then weight += s · that


PATCHED = {"dora": _dora_patched, "oft": _oft_patched}


def _assert_best_rank_k(delta, target, k):
    s = torch.linalg.svdvals(target)
    got_s = torch.linalg.svdvals(delta)
    torch.testing.assert_close(got_s[:k], s[:k], rtol=1e-4, atol=1e-6 * float(s[0]))
    assert float(got_s[k:].max()) <= 1e-5 * float(s[0])  # rank k
    optimum = float(s[k:].pow(2).sum().sqrt() / s.pow(2).sum().sqrt())
    assert float((delta - target).norm() / target.norm()) == pytest.approx(optimum, rel=1e-3, abs=2e-6)


def _lora_delta(sd, key):
    name = kohya_name(key, "sd2")
    down, up = sd[f"{name}.lora_down.weight"].double(), sd[f"{name}.lora_up.weight"].double()
    alpha = sd.get(f"{name}.alpha")
    return (up @ down) * (1.0 if alpha is None else float(alpha) / down.shape[0])


@pytest.mark.parametrize("kind", ["dora", "oft"])
def test_convert_with_base_is_the_best_rank_k_lora_of_the_patch(files, capsys, kind):
    d, base = files
    out = d / f"{kind}_lora.safetensors"
    assert cli(["convert", str(d / f"{kind}.safetensors"), "--to", "kohya", "--base", str(d / "sd2_te_part.safetensors"),
                "--rank", str(RANK), "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["converted_modules"] == 2
    src, got = load_file(str(d / f"{kind}.safetensors")), load_file(str(out))
    for key in MODULES:
        w = base[key].double()
        target = PATCHED[kind](src, key, w, 1.0) - w
        _assert_best_rank_k(_lora_delta(got, key), target, RANK)


def test_merge_svd_with_base_sums_the_patches_at_their_weights(files, capsys):
    d, base = files
    out = d / "merged.safetensors"
    ckpt = str(d / "sd2_te_part.safetensors")
    args = ["merge", f"{d / 'dora.safetensors'}:0.7", f"{d / 'oft.safetensors'}:1.3", "--method", "svd",
            "--rank", str(RANK), "-o", str(out), "--json"]
    assert cli(args + ["--base", ckpt]) == 0
    json.loads(capsys.readouterr().out)
    dora, oft, got = (load_file(str(d / n)) for n in ("dora.safetensors", "oft.safetensors", "merged.safetensors"))
    for key in MODULES:
        w = base[key].double()
        target = (_dora_patched(dora, key, w, 0.7) - w) + (_oft_patched(oft, key, w, 1.3) - w)
        _assert_best_rank_k(_lora_delta(got, key), target, RANK)


@pytest.mark.parametrize("kind,what", [("dora", "DoRA"), ("oft", "OFT")])
def test_without_base_the_cli_names_the_file_and_the_fix(files, capsys, kind, what):
    d, _ = files
    src = str(d / f"{kind}.safetensors")
    assert cli(["convert", src, "--to", "kohya", "--rank", "4", "-o", str(d / "x.safetensors")]) == 2
    assert cli(["merge", f"{src}:0.5", "--method", "svd", "--rank", "4", "-o", str(d / "y.safetensors")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith(f"error: {src}: module ") and f"{what} is multiplicative" in line and "--base CKPT" in line
    assert not (d / "x.safetensors").exists() and not (d / "y.safetensors").exists()
