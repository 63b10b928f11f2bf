"""Session fixtures of the in-ComfyUI tests: one headless ComfyUI server for the whole run.

Without ``COMFYUI_PATH`` / ``COMFYUI_PYTHON`` every test here is skipped with a reason that
names both variables. The server's temporary base directory gets, at test time:

* ``models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors`` — an architecture-exact,
  random-weight SD1.5 single-file checkpoint (≈2.1 GB fp16, written by ComfyUI's python);
* ``models/loras/…`` — random adapters (see :mod:`lora_fixtures`) in kohya, diffusers, peft
  and ComfyUI layouts, an SDXL one and a corrupt one.

Set ``LCM_LORA_TEST_CACHE=/some/dir`` to keep the generated checkpoints between runs
(they are re-made when the generator script changes).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

import comfy_harness as H
import graphs as G
import lora_fixtures as F

SD15_CKPT = "v1-5-pruned-emaonly-fp16.safetensors"
SDXL_CKPT = "sd_xl_base_1.0.safetensors"
LCM_SD15 = "lcm-lora-sdv1-5.safetensors"
LCM_SDXL = "lcm-lora-sdxl.safetensors"
PCM_SD15 = "pcm_sd15_smallcfg_4step_converted.safetensors"  # example g: a released PCM LoRA's name (no metadata)
STYLE_SD15 = "style-lora-sd15.safetensors"
CORRUPT = "corrupt-lora.safetensors"
NAN_LORA = "nan-lora.safetensors"
FORMAT_FILES = {
    "kohya": LCM_SD15,
    "diffusers": "formats/lcm-diffusers.safetensors",
    "peft": "formats/lcm-peft/adapter_model.safetensors",
    "comfy": "formats/lcm-comfy.safetensors",
}

# Which modules the random adapters touch (every LCM-LoRA target type appears in LCM_PREFIXES).
LCM_PREFIXES = ("down_blocks.1.", "up_blocks.0.upsamplers.")
STYLE_PREFIXES = ("down_blocks.0.attentions.", "down_blocks.1.attentions.0.", "up_blocks.3.attentions.2.")
SDXL_PREFIXES = ("down_blocks.2.attentions.0.transformer_blocks.0.", "mid_block.attentions.0.transformer_blocks.0.")


def _env():
    env = H.comfy_env()
    if isinstance(env, str):
        pytest.skip(env)
    return env


@pytest.fixture(scope="session")
def comfy_env():
    return _env()


def _cache_dir(tmp_path_factory) -> Path:
    cache = os.environ.get("LCM_LORA_TEST_CACHE")
    if cache:
        path = Path(cache)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("comfy-fixtures")


def _checkpoint_version() -> str:
    """``CHECKPOINT_VERSION`` of scripts/comfy_side.py (cached checkpoints are keyed by it)."""
    match = re.search(r"^CHECKPOINT_VERSION = (\d+)", (H.SCRIPTS / "comfy_side.py").read_text(), re.M)
    return f"v{match.group(1)}"


def cached_checkpoint(comfy_env, tmp_path_factory, arch: str, workdir: Path) -> Path:
    comfy_path, python = comfy_env
    cache = _cache_dir(tmp_path_factory)
    out = cache / f"random-{arch}-{_checkpoint_version()}.safetensors"
    if not out.exists():
        H.make_checkpoint(comfy_path, python, arch, out, workdir)
    return out


ARCHS = ("sd1", "sd2", "sdxl", "ssd1b")
SIGMA_CASES = [(1, 50, 1.0), (2, 50, 1.0), (4, 50, 1.0), (8, 50, 1.0), (6, 50, 0.5), (3, 50, 0.3), (4, 50, 0.0)]
# LCM Scheduler with its schedule / phases inputs (pcm / tscd phase edges; lcm with any phases = the cases above)
PHASED_SIGMA_CASES = [(4, 50, 1.0, "pcm", 4), (2, 50, 1.0, "pcm", 4), (8, 50, 1.0, "pcm", 4), (3, 50, 1.0, "pcm", 4),
                      (2, 50, 0.5, "pcm", 4), (4, 50, 1.0, "tscd", 4), (1, 50, 1.0, "tscd", 4), (6, 50, 1.0, "tscd", 2),
                      (2, 50, 0.5, "tscd", 4), (4, 50, 0.0, "pcm", 4), (4, 50, 1.0, "lcm", 7), (6, 50, 0.5, "lcm", 2),
                      (4, 50, 1.0, "pcm", 4, "0/15/30/41"), (2, 50, 0.5, "pcm", 4, "0/15/30/41"),
                      (8, 50, 1.0, "pcm", 4, "0/15/30/41"), (4, 50, 1.0, "lcm", 4, "0/15/30/41")]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """Scratch space shared by the session (diffusers UNet shape tables are made once here)."""
    return tmp_path_factory.mktemp("comfy-work")


@pytest.fixture(scope="session")
def comfy_facts(comfy_env, workdir) -> dict:
    """ComfyUI's LoRA key maps for every architecture and the LCM Scheduler's sigmas, from ComfyUI's python."""
    comfy_path, python = comfy_env
    return H.comfy_facts(comfy_path, python, list(ARCHS), SIGMA_CASES + PHASED_SIGMA_CASES, H.REPO, workdir)


@pytest.fixture(scope="session")
def sd15_checkpoint(comfy_env, tmp_path_factory, workdir) -> Path:
    return cached_checkpoint(comfy_env, tmp_path_factory, "sd1", workdir)


@pytest.fixture(scope="session")
def sd15_loras(comfy_env, tmp_path_factory) -> dict:
    """Random adapters (LCM: UNet only, style: UNet + text encoder) as :class:`lora_fixtures.RandomLora`."""
    shapes = F.module_shapes("sd1")
    lcm = F.random_lora("sd1", F.select_modules(shapes, LCM_PREFIXES), shapes, rank=4, seed=1)
    style = F.random_lora("sd1", F.select_modules(shapes, STYLE_PREFIXES, te_layers=(0, 11)), shapes, rank=8, seed=2)
    xl_shapes = F.module_shapes("sdxl")
    sdxl = F.random_lora("sdxl", F.select_modules(xl_shapes, SDXL_PREFIXES, te_layers=(0,), te_components=("text_encoder_2",)),
                         xl_shapes, rank=4, seed=3)
    return {"lcm": lcm, "style": style, "sdxl": sdxl}


def write_lora_files(loras_dir: Path, loras: dict, keymap: dict, workdir: Path) -> None:
    (loras_dir / "formats").mkdir(parents=True, exist_ok=True)
    F.write_kohya(loras["lcm"], loras_dir / LCM_SD15)
    F.write_kohya(loras["lcm"], loras_dir / PCM_SD15)
    F.write_kohya(loras["style"], loras_dir / STYLE_SD15)
    F.write_kohya(loras["sdxl"], loras_dir / LCM_SDXL)
    dif = F.write_diffusers(loras["lcm"], workdir / "diffusers-lora")
    shutil.copy(dif, loras_dir / FORMAT_FILES["diffusers"])
    F.write_peft(loras["lcm"], loras_dir / "formats" / "lcm-peft")
    F.write_comfy(loras["lcm"], loras_dir / FORMAT_FILES["comfy"], keymap)
    nan = F.random_lora("sd1", sorted(loras["lcm"].down)[:3], F.module_shapes("sd1"), rank=4, seed=5, dtype=torch.float16)
    nan.up[sorted(nan.up)[1]][0, 0] = float("nan")
    F.write_kohya(nan, loras_dir / NAN_LORA)
    good = (loras_dir / STYLE_SD15).read_bytes()
    (loras_dir / CORRUPT).write_bytes(good[: len(good) // 2])  # header promises bytes that are missing


@pytest.fixture(scope="session")
def comfy(request, comfy_env, tmp_path_factory, workdir):
    """The running server (``comfy_harness.ComfyServer``), shared by every in-ComfyUI test.

    It boots while the checkpoint and adapters are made (ComfyUI lists model folders on demand).
    """
    comfy_path, python = comfy_env
    server = H.ComfyServer(comfy_path, python, base_dir=tmp_path_factory.mktemp("comfy-base"))
    server.start(wait=False)
    try:
        checkpoint = request.getfixturevalue("sd15_checkpoint")
        os.symlink(checkpoint, server.checkpoints / SD15_CKPT)
        facts = request.getfixturevalue("comfy_facts")
        write_lora_files(server.loras, request.getfixturevalue("sd15_loras"), facts["keymaps"]["sd1"], workdir)
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()
        print(f"\nComfyUI server log: {server.log_path}")


@pytest.fixture(scope="session")
def object_info(comfy) -> dict:
    return comfy.object_info()



class Probes:
    """Named 64×64 sampling runs (see ``graphs.probe``), each run at most once per session."""

    def __init__(self, server):
        self.server = server
        self.results = {}

    def graph(self, name: str) -> dict:
        g = G.base(SD15_CKPT)
        if name == "base":  # no adapter, ComfyUI's LCM sampling and sampler
            g["ms"] = G.model_sampling_lcm(("ckpt", 0))
            return G.probe(g, ("ms", 0), name, sampler="lcm")
        if name == "lora_builtin":  # the ComfyUI reference: LoraLoader → ModelSamplingDiscrete(lcm) → lcm
            g["lora"] = G.lora_loader(LCM_SD15)
            g["ms"] = G.model_sampling_lcm(("lora", 0))
            return G.probe(g, ("ms", 0), name, sampler="lcm", steps=2)
        if name == "lora_ours":  # LCM-LoRA Loader → LCM Sampler, same seed and sigmas
            g["lcm"] = G.lcm_loader(LCM_SD15)
            return G.probe(g, ("lcm", 0), name, sampler="ours", steps=2)
        if name == "merge":  # LCM Adapter Merge (concat) 0.8·style + 1.0·LCM
            g["merge"] = merge_node(("ckpt", 0))
            return G.probe(g, ("merge", 0), name, sampler="lcm")
        if name == "fuse":  # LCM Adapter Merge, method fuse
            g["merge"] = merge_node(("ckpt", 0), method="fuse")
            return G.probe(g, ("merge", 0), name, sampler="lcm")
        if name == "stacked":  # a stock LoraLoader, then the LCM-LoRA Loader on its MODEL
            g["style"] = G.lora_loader(STYLE_SD15, strength_model=0.8, strength_clip=0.8)
            g["lcm"] = G.lcm_loader(LCM_SD15, model=("style", 0))
            return G.probe(g, ("lcm", 0), name, sampler="lcm")
        if name == "chained":  # two stock LoraLoaders at the same strengths
            g["style"] = G.lora_loader(STYLE_SD15, strength_model=0.8, strength_clip=0.8)
            g["lcm"] = G.lora_loader(LCM_SD15, model=("style", 0), clip=("style", 1))
            g["ms"] = G.model_sampling_lcm(("lcm", 0))
            return G.probe(g, ("ms", 0), name, sampler="lcm")
        raise KeyError(name)

    def run(self, name: str, graph: dict | None = None):
        if name not in self.results:
            result = self.server.run(graph if graph is not None else self.graph(name))
            assert result.status == "success", f"probe {name}: {result.message()}\n{result.log[-3000:]}"
            self.results[name] = (result, G.saved_latent(self.server.output, result))
        return self.results[name]

    def latent(self, name: str, graph: dict | None = None):
        return self.run(name, graph)[1]


def merge_node(model, clip=None, method="concat", weights=(0.8, 1.0), adapters=(STYLE_SD15, LCM_SD15), rank=64):
    inputs = {"model": list(model), "method": method, "rank": rank, "patch_sampling": True}
    if clip is not None:
        inputs["clip"] = list(clip)
    for i, (a, w) in enumerate(zip(adapters, weights), start=1):
        inputs[f"adapter_{i}"] = a
        inputs[f"weight_{i}"] = w
    return {"class_type": "LCMAdapterMerge", "inputs": inputs}


@pytest.fixture(scope="session")
def probes(comfy) -> Probes:
    return Probes(comfy)


def cheap_prompt(tag: str) -> dict:
    """Decode an empty 64×64 latent: proves the server still executes prompts (keeps the checkpoint cached)."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CKPT}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["latent", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": f"alive_{tag}"}},
    }


@pytest.fixture(scope="session")
def run_browser(tmp_path_factory):
    """``run_browser(script, url, *args, screenshot_env=..., screenshot_name=...) -> dict``: run one of
    the playwright scripts of ``tests/browser`` against ``url`` in headless chromium and return its
    ``--out`` JSON (plus ``_screenshot_path``). Skips when chromium or the node modules are missing.
    The screenshot goes to ``$<screenshot_env>`` (relative: to the repo) or to a temporary folder."""
    import json
    import subprocess

    reason = H.browser_skip_reason()

    def run(script: str, url: str, *args: str, screenshot_env: str, screenshot_name: str) -> dict:
        if reason:
            pytest.skip(reason)
        work = tmp_path_factory.mktemp(Path(script).stem)
        out = work / "ui.json"
        shot = Path(os.environ.get(screenshot_env, work / screenshot_name))
        if not shot.is_absolute():
            shot = H.REPO / shot
        cmd = ["node", str(H.BROWSER_DIR / script), "--url", url, *args, "--out", str(out), "--screenshot", str(shot),
               "--chromium", H.CHROMIUM]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(H.BROWSER_DIR))
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{out.read_text() if out.exists() else ''}"
        data = json.loads(out.read_text())
        data["_screenshot_path"] = str(shot)
        return data

    return run
