"""Small API-format graphs for the in-ComfyUI tests (built-in nodes as the reference).

A "probe" samples a 64×64 latent with SamplerCustom (cfg 1, fixed seed and sigmas) and saves
it with SaveLatent, so two model/sampler set-ups can be compared tensor for tensor.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch
from safetensors.torch import load_file

_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_counter)}"


def base(ckpt: str, prompt: str = "a watercolor fox", size: int = 64) -> dict:
    """Checkpoint, text encodings of the unpatched CLIP, and an empty latent."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
    }


def lcm_loader(lora: str, model=("ckpt", 0), clip=None, strength_model=1.0, strength_clip=1.0, patch=True) -> dict:
    inputs = {"model": list(model), "lora_name": lora, "strength_model": strength_model,
              "strength_clip": strength_clip, "patch_sampling": patch}
    if clip is not None:
        inputs["clip"] = list(clip)
    return {"class_type": "LCMLoraLoader", "inputs": inputs}


def lora_loader(lora: str, model=("ckpt", 0), clip=("ckpt", 1), strength_model=1.0, strength_clip=1.0) -> dict:
    return {"class_type": "LoraLoader", "inputs": {"model": list(model), "clip": list(clip), "lora_name": lora,
                                                   "strength_model": strength_model, "strength_clip": strength_clip}}


def model_sampling_lcm(model) -> dict:
    return {"class_type": "ModelSamplingDiscrete", "inputs": {"model": list(model), "sampling": "lcm", "zsnr": False}}


def probe(graph: dict, model, prefix: str, *, sampler: str = "ours", steps: int = 1, seed: int = 7,
          positive=("pos", 0), negative=("neg", 0), mode: str = "lcm") -> dict:
    """Add LCMScheduler + sampler + SamplerCustom + SaveLatent to ``graph`` (in place); returns it."""
    graph["sigmas"] = {"class_type": "LCMScheduler", "inputs": {"steps": steps, "original_steps": 50, "denoise": 1.0}}
    if sampler == "ours":
        graph["sampler"] = {"class_type": "LCMSampler", "inputs": {"mode": mode, "gamma": 0.3, "eta": 1.0}}
    else:
        graph["sampler"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    graph["sample"] = {"class_type": "SamplerCustom", "inputs": {
        "model": list(model), "add_noise": True, "noise_seed": seed, "cfg": 1.0,
        "positive": list(positive), "negative": list(negative), "sampler": ["sampler", 0],
        "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}}
    graph["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": prefix}}
    return graph


def saved_latent(output_dir: Path, result, node: str = "save") -> torch.Tensor:
    entry = result.outputs[node]["latents"][0]
    path = Path(output_dir) / entry.get("subfolder", "") / entry["filename"]
    return load_file(str(path))["latent_tensor"]


def copy_lora_with_metadata(loras_dir: Path, src: str, name: str, metadata: dict) -> str:
    """Write ``src``'s tensors to ``loras_dir/name`` with its metadata updated by ``metadata`` (a fixture adapter
    carrying a sampling recipe); returns ``name``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(Path(loras_dir) / src), "pt") as f:
        meta = dict(f.metadata() or {})
    meta.update(metadata)
    out = Path(loras_dir) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(Path(loras_dir) / src)), str(out), metadata=meta)
    return name


def sigmas_per_setup(ckpt: str, setups: dict) -> dict:
    """One graph holding every set-up's nodes (ids prefixed by the set-up's name; ``["l", 0]`` refers to its own
    loader) and, per set-up, BasicScheduler's sigmas of its model ("ms" if it has one, else "l") shown by
    PreviewAny as ``<name>_show``: the model sampling each set-up ends with."""
    import json

    g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    for name, nodes in setups.items():
        model = "ms" if "ms" in nodes else "l"
        for node_id, node in nodes.items():
            g[f"{name}_{node_id}"] = json.loads(json.dumps(node).replace('["l", 0]', f'["{name}_l", 0]'))
        g[f"{name}_sigmas"] = {"class_type": "BasicScheduler", "inputs": {
            "model": [f"{name}_{model}", 0], "scheduler": "simple", "steps": 3, "denoise": 1.0}}
        g[f"{name}_show"] = {"class_type": "PreviewAny", "inputs": {"source": [f"{name}_sigmas", 0]}}
    return g


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
