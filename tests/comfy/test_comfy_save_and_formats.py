"""LCM Adapter Save, and the LCM-LoRA Loader on every adapter format.

* Formats: the same random adapter written by kohya naming, by diffusers'
  ``save_lora_weights``, as a peft folder (``peft.LoraConfig``) and in ComfyUI's own layout is
  loaded by the LCM-LoRA Loader (patches included) and re-saved as kohya fp32: every file's ΔW
  equals the fixture's (alpha/rank)·up·down (diffusers folds alpha into up; the formats that
  keep alpha round-trip tensor for tensor).
* Save: a merged adapter lands in the loras folder as ``<filename_prefix>_00001_.safetensors``
  (ComfyUI's counter, as SaveImage / SaveLora), kohya keys and metadata, shows up in the stock
  LoraLoader's list; saving again takes the next number (never overwrites, skips numbers already
  taken), a prefix leaving the folder is refused naming the ``filename_prefix`` input, and the
  stock LoraLoader applying the file reproduces the merge node's own MODEL output.
"""
from __future__ import annotations

import uuid

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import graphs as G
import lora_fixtures as F
from conftest import FORMAT_FILES, SD15_CKPT, merge_node

pytestmark = pytest.mark.comfyui


def projected_delta(down: torch.Tensor, up: torch.Tensor, alpha: float | None, v: torch.Tensor) -> torch.Tensor:
    """ΔW·v for a random v: equal products mean equal ΔW (with probability 1), at O(r·(in+out)) cost."""
    rank = down.shape[0]
    scale = 1.0 if alpha is None else alpha / rank
    return scale * (up.double().reshape(up.shape[0], -1) @ (down.double().reshape(rank, -1) @ v))


def kohya_projected(sd: dict, name: str, v: torch.Tensor) -> torch.Tensor:
    alpha = float(sd[f"{name}.alpha"]) if f"{name}.alpha" in sd else None
    return projected_delta(sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"], alpha, v)


def test_every_format_loads_to_the_same_adapter(comfy, sd15_loras):
    tag = uuid.uuid4().hex[:8]
    g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CKPT}}}
    for fmt, name in FORMAT_FILES.items():
        g[f"load_{fmt}"] = G.lcm_loader(name, clip=("ckpt", 1))
        g[f"save_{fmt}"] = {"class_type": "LCMAdapterSave", "inputs": {
            "adapter": [f"load_{fmt}", 2], "filename_prefix": f"roundtrip_{tag}/{fmt}", "dtype": "fp32"}}
    result = comfy.run(g)
    assert result.status == "success", result.message()
    assert "lora key not loaded" not in result.log and "NOT LOADED" not in result.log
    saved = {fmt: load_file(str(comfy.loras / f"roundtrip_{tag}" / f"{fmt}_00001_.safetensors")) for fmt in FORMAT_FILES}
    lora = sd15_loras["lcm"]
    gen = torch.Generator().manual_seed(0)
    vectors = {k: torch.randn(lora.down[k][0].numel(), 3, generator=gen, dtype=torch.float64) for k in lora.down}
    expected = {k: projected_delta(lora.down[k], lora.up[k], lora.alpha, vectors[k]) for k in lora.down}
    for fmt, sd in saved.items():
        assert len({k.split(".")[0] for k in sd}) == len(lora.down), fmt
        for key in lora.down:
            got = kohya_projected(sd, F.kohya_name(key, "sd1"), vectors[key])
            torch.testing.assert_close(got, expected[key], rtol=1e-6, atol=1e-9, msg=f"{fmt} {key}")
    # formats that carry alpha (kohya, peft config, ComfyUI) round-trip tensor for tensor
    for fmt in ("peft", "comfy"):
        assert sorted(saved[fmt]) == sorted(saved["kohya"])
        assert all(torch.equal(saved[fmt][k], saved["kohya"][k]) for k in saved["kohya"]), fmt


def save_prompt(prefix: str, dtype: str, method: str = "concat", rank: int = 64) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CKPT}},
        "merge": merge_node(("ckpt", 0), method=method, rank=rank),
        "save": {"class_type": "LCMAdapterSave", "inputs": {"adapter": ["merge", 2], "filename_prefix": prefix,
                                                            "dtype": dtype}},
    }


def test_save_counts_up_never_overwrites_and_lists_the_file(comfy, probes):
    prefix = f"saved/merged_{uuid.uuid4().hex[:8]}"
    first = comfy.run(save_prompt(prefix, "fp32"))
    assert first.status == "success", first.message()
    name1 = f"{prefix}_00001_.safetensors"  # ComfyUI's counter convention (SaveImage, SaveLora)
    assert first.outputs["save"]["lcm_saved"] == [name1]
    path1 = comfy.loras / name1
    assert path1.is_file()
    with safe_open(str(path1), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("lora_unet_") or k.startswith("lora_te_") for k in keys)
    assert any(k.endswith(".lora_down.weight") for k in keys)
    assert meta.get("lcm_lora.saved_by") and "lcm_lora.merge_recipe" in meta
    before = path1.read_bytes()

    # it is in every LoRA list now
    stock = comfy.object_info("LoraLoader")["LoraLoader"]["input"]["required"]["lora_name"][0]
    assert name1 in stock

    # the same prefix again: the next number, the first file untouched, no temp files left
    again = comfy.run(save_prompt(prefix, "fp16"))
    assert again.status == "success", again.message()
    assert again.outputs["save"]["lcm_saved"] == [f"{prefix}_00002_.safetensors"]
    assert path1.read_bytes() == before
    assert next(iter(load_file(str(comfy.loras / f"{prefix}_00002_.safetensors")).values())).dtype == torch.float16
    assert [p.name for p in path1.parent.iterdir() if p.name.startswith(".")] == []

    # a number taken by someone else is skipped, never replaced (ComfyUI: highest number + 1)
    squatter = comfy.loras / f"{prefix}_00007_.safetensors"
    squatter.write_bytes(b"not ours")
    third = comfy.run(save_prompt(prefix, "bf16"))  # an identical prompt would be served from ComfyUI's cache
    assert third.status == "success", third.message()
    assert third.outputs["save"]["lcm_saved"] == [f"{prefix}_00008_.safetensors"]
    assert squatter.read_bytes() == b"not ours"

    # and it stays out of everything but the loras folder; the error names the node's input
    for bad_prefix in ("../escape", "/tmp/abs_escape", "saved/../../escape"):
        bad = comfy.run(save_prompt(bad_prefix, "fp16"))
        assert bad.status == "error", bad_prefix
        msg = bad.error["exception_message"]
        assert "filename_prefix" in msg and "inside the loras folder" in msg, msg
        assert "--force" not in msg and "overwrite=True" not in msg, msg
    assert not (comfy.loras.parent / "escape_00001_.safetensors").exists()


@pytest.mark.parametrize("stem", ["b" * 240, "漢" * 80])
def test_a_long_prefix_is_shortened_and_keeps_its_counter(comfy, probes, stem):
    """A prefix past the file system's 255 bytes (with the counter, the suffix and the atomic write's temporary
    ".<name>.XXXXXXXX.tmp" sibling) is shortened at a character boundary: both saves land, numbered 1 and 2."""
    tag = uuid.uuid4().hex[:6]
    names = []
    for dtype in ("fp16", "bf16"):  # two prompts: an identical one would be served from ComfyUI's cache
        r = comfy.run(save_prompt(f"long/{tag}{stem}", dtype))
        assert r.status == "success", r.message()
        names += r.outputs["save"]["lcm_saved"]
    assert [n.rsplit("_", 2)[1] for n in names] == ["00001", "00002"], names
    for n in names:
        leaf = n.split("/")[-1]
        assert leaf.startswith(tag) and len((".%s.XXXXXXXX.tmp" % leaf).encode()) <= 255, leaf
        assert (comfy.loras / n).is_file()


def test_a_refused_save_creates_no_folder_outside_the_loras_folder(comfy, probes, tmp_path):
    """A symbolic link inside the loras folder that leads out of it: the save is refused before ComfyUI's
    get_save_image_path creates the sub-folders."""
    outside = tmp_path / "outside"
    outside.mkdir()
    link = comfy.loras / f"link_{uuid.uuid4().hex[:6]}"
    link.symlink_to(outside, target_is_directory=True)
    try:
        r = comfy.run(save_prompt(f"{link.name}/newdir/deeper/x", "fp16"))
        assert r.status == "error"
        assert "filename_prefix" in r.error["exception_message"], r.error["exception_message"]
        assert list(outside.iterdir()) == []
    finally:
        link.unlink()


def test_saved_merge_loaded_by_stock_lora_loader_reproduces_the_merge(comfy, probes):
    name = f"saved/merge_fp32_{uuid.uuid4().hex[:8]}"
    saved = comfy.run(save_prompt(name, "fp32"))
    assert saved.status == "success", saved.message()
    g = G.base(SD15_CKPT)
    g["lora"] = G.lora_loader(f"{name}_00001_.safetensors")
    g["ms"] = G.model_sampling_lcm(("lora", 0))
    G.probe(g, ("ms", 0), "saved_merge", sampler="lcm")
    result, latent = probes.run("saved_merge", g)
    assert "lora key not loaded" not in result.log
    merged = probes.latent("merge")
    assert G.rel_diff(latent, merged) < 1e-6
    assert G.rel_diff(latent, probes.latent("base")) > 1e-3


def test_svd_merge_reports_its_error_and_saves_the_rank(comfy, sd15_loras):
    name = f"saved/svd_{uuid.uuid4().hex[:8]}"
    result = comfy.run(save_prompt(name, "fp32", method="svd", rank=4))
    assert result.status == "success", result.message()
    summary = result.outputs["merge"]["lcm_merge"][0]
    assert 0.0 < summary["total_relative_error"] < 1.0
    assert "svd" in result.outputs["merge"]["text"][0]
    sd = load_file(str(comfy.loras / f"{name}_00001_.safetensors"))
    ranks = {v.shape[0] for k, v in sd.items() if k.endswith(".lora_down.weight")}
    assert ranks == {4}
    # modules only one adapter touches keep their exact update when its rank already fits
    lcm = sd15_loras["lcm"]
    style_keys = set(sd15_loras["style"].down)
    only_lcm = [k for k in lcm.down if k not in style_keys]
    assert only_lcm
    v = torch.randn(lcm.down[only_lcm[0]][0].numel(), 2, dtype=torch.float64)
    got = kohya_projected(sd, F.kohya_name(only_lcm[0], "sd1"), v)
    want = projected_delta(lcm.down[only_lcm[0]], lcm.up[only_lcm[0]], lcm.alpha, v)
    assert float((got - want).norm() / want.norm()) < 1e-5  # exact up to float32 SVD rounding
