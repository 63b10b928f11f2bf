"""Full-size SD1.5, end to end against real ComfyUI (slow; needs COMFYUI_PATH and COMFYUI_PYTHON).

1. A random-weight, architecture-exact SD1.5 single-file checkpoint in ComfyUI's own layout
   (``tests/comfy/comfy_harness.make_checkpoint``, written by ComfyUI's python).
2. The trainer loads it as a teacher (diffusers' single-file conversion with our in-code configs,
   ComfyUI's bundled CLIP tokenizer) and trains one step; the kohya adapter is written.
3. In ComfyUI's python: ``load_checkpoint_guess_config`` + ``LoraLoader.load_lora`` (the stock
   node) and our ``LCMLoraLoader`` node: every adapter module must load ("lora key not loaded" is
   an error here); the raw UNet outputs without LoRA, with LoraLoader and with our node are saved.
4. Our teacher UNet (from the single file) must reproduce ComfyUI's base output, and teacher +
   adapter (``lcm_core.fuse.fuse_into_module``) ComfyUI's LoRA output.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.comfyui]
ROOT = Path(__file__).resolve().parents[1]

COMFY_SIDE = r'''
import json, logging, sys
comfy_path, ckpt, lora_dir, lora_name, inputs, out, repo = sys.argv[1:]
sys.path.insert(0, comfy_path)
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]
import torch
import folder_paths
folder_paths.add_model_folder_path("loras", lora_dir)
import comfy.sd, comfy.model_management
import nodes

messages = []
class Catch(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger().addHandler(Catch())

model, clip, vae = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True)[:3]
data = torch.load(inputs, weights_only=True)

def unet_out(patcher):
    comfy.model_management.load_models_gpu([patcher])
    dm = patcher.model.diffusion_model
    with torch.no_grad():
        return dm(data["x"].to(dm.dtype if hasattr(dm, "dtype") else torch.float32), timesteps=data["t"],
                  context=data["context"]).float()

base = unet_out(model)
lora_model, _ = nodes.LoraLoader().load_lora(model, clip, lora_name, 1.0, 0.0)
lora = unet_out(lora_model)
patched = len(lora_model.patches)

# our pack's loader node (imported as ComfyUI imports a custom node)
import os, runpy
runpy.run_path(os.path.join(repo, "nodes", "trainer_launch.py"), run_name="lcm_lora_launcher")["load_pack"](repo, "comfyui_lcm_lora")
from comfyui_lcm_lora.nodes.lcm_lora_loader import LCMLoraLoader
node_out = LCMLoraLoader.execute(model, lora_name, 1.0, 0.0, False, clip=None)
node_model = (getattr(node_out, "result", None) or node_out.args)[0]
ours_node = unet_out(node_model)
torch.save({"base": base, "lora": lora, "node": ours_node}, out)
print(json.dumps({"patched": patched, "not_loaded": [m for m in messages if "lora key not loaded" in m or "NOT LOADED" in m],
                  "unet_dtype": str(model.model.diffusion_model.dtype) if hasattr(model.model.diffusion_model, "dtype") else "?"}))
'''


def _comfy():
    sys.path.insert(0, str(ROOT / "tests" / "comfy"))
    import comfy_harness as H

    env = H.comfy_env()
    if isinstance(env, str):
        pytest.skip(env)
    return H, env


def test_sd15_single_file_teacher_and_adapter_in_comfyui(tmp_path):
    from lcm_lora.lcm_core.fuse import fuse_into_module
    from lcm_lora.lcm_core.lora import read_adapter
    from lcm_lora.training.config import load_config
    from lcm_lora.training.teacher import load_teacher
    from lcm_lora.training.tiny_models import write_tiny_dataset
    from lcm_lora.training.trainer import train

    H, (comfy_path, python) = _comfy()
    cache = Path(os.environ.get("LCM_LORA_TEST_CACHE", tmp_path))
    ckpt = cache / "train-test-random-sd1.safetensors"
    if not ckpt.exists():
        H.make_checkpoint(comfy_path, python, "sd1", ckpt, tmp_path)
    os.environ.setdefault("COMFYUI_PATH", str(comfy_path))  # the trainer takes ComfyUI's CLIP tokenizer from here

    # one training step on the full-size teacher (bf16 base weights keep memory low), kohya output
    data = write_tiny_dataset(tmp_path / "data", n=2, size=64)
    loras = tmp_path / "loras"
    loras.mkdir()
    over = [f"teacher={ckpt}", f"data={data}", "max_steps=1", "batch_size=1", "lora.rank=4", "lora.alpha=4",
            "data.resolution=64", "data.buckets=false", "data.cache_latents=false", "data.cache_text=false",
            "train.mixed_precision=bf16", "validation.every=0", "checkpoint.every=0", "logging.progress=false",
            "optim.learning_rate=0.05", "output.dtype=fp32", "teacher.arch=auto"]
    result = train(ROOT / "configs" / "tiny_cpu.yaml", tmp_path / "run", overrides=over, progress=False)
    adapter_path = loras / "trained.safetensors"
    adapter_path.write_bytes(result.adapter_path.read_bytes())
    adapter = read_adapter(adapter_path)
    assert adapter.architecture == "sd1" and adapter.metadata["lcm_lora.base_architecture"] == "sd1"
    del result

    gen = torch.Generator().manual_seed(0)
    inputs = {"x": torch.randn(1, 4, 8, 8, generator=gen), "t": torch.tensor([499]), "context": torch.randn(1, 77, 768, generator=gen)}
    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "comfy_side_train.py"
    script.write_text(COMFY_SIDE)
    proc = subprocess.run([str(python), str(script), str(comfy_path), str(ckpt), str(loras), "trained.safetensors",
                           str(tmp_path / "inputs.pt"), str(tmp_path / "comfy_out.pt"), str(ROOT)],
                          cwd=str(comfy_path), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["not_loaded"] == [], facts["not_loaded"][:5]
    assert facts["patched"] == len(adapter)
    comfy_out = torch.load(tmp_path / "comfy_out.pt", weights_only=True)

    cfg = load_config({"teacher": {"path": str(ckpt)}})
    teacher = load_teacher(cfg.teacher)
    assert teacher.arch == "sd1"
    unet = teacher.unet.float().eval()
    with torch.no_grad():
        ours_base = unet(inputs["x"], inputs["t"], encoder_hidden_states=inputs["context"]).sample
        torch.testing.assert_close(ours_base, comfy_out["base"], rtol=1e-3, atol=1e-3)
        fuse_into_module(unet, adapter, strict=True)
        ours_lora = unet(inputs["x"], inputs["t"], encoder_hidden_states=inputs["context"]).sample
    assert (comfy_out["lora"] - comfy_out["base"]).abs().max() > 1e-3  # the trained LoRA changes the output
    torch.testing.assert_close(ours_lora, comfy_out["lora"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(comfy_out["node"], comfy_out["lora"], rtol=1e-4, atol=1e-4)  # our LCMLoraLoader node
