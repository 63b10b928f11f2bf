"""Random LoRA adapters for the in-ComfyUI tests, written in each format by an independent writer.

Module names and weight shapes come from diffusers / transformers models built on the meta
device (``lcm_core.model_configs`` configs), not from the project's key tables, and the
files are written the way each ecosystem writes them:

* kohya (sd-scripts ``networks/lora.py`` naming: ``lora_unet_`` / ``lora_te_`` / ``lora_te1_`` /
  ``lora_te2_`` + path with ``.`` → ``_``; ``.lora_down.weight``, ``.lora_up.weight``, ``.alpha``);
* diffusers (``StableDiffusion[XL]Pipeline.save_lora_weights`` itself);
* peft (a folder with ``adapter_model.safetensors`` — ``base_model.model.<path>.lora_A/B.weight`` —
  and the ``adapter_config.json`` written by ``peft.LoraConfig.save_pretrained``);
* ComfyUI's own LoRA layout (``diffusion_model.<LDM path>.lora_up/down.weight`` and
  ``text_encoders.<clip key>.…``, as its ``LoraSave`` node writes), with names taken from
  ComfyUI's own LoRA key maps (computed in ComfyUI's python by ``scripts/comfy_side.py``).

Every format encodes the same ΔW = (alpha/rank)·up·down: alpha is rank/2 so the scale 0.5
is exact in binary, and formats without alpha fold it into ``up`` (also exact).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

# The module types the released LCM-LoRAs train (diffusers train_lcm_distill_lora_sd*.py
# target_modules), used as suffixes.
LCM_TARGET_SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                       "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
TE_TARGET_SUFFIXES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


@dataclass
class RandomLora:
    arch: str
    rank: int
    alpha: float
    down: dict[str, torch.Tensor]  # canonical key -> (r, in[, kh, kw])
    up: dict[str, torch.Tensor]  # canonical key -> (out, r[, 1, 1])


@functools.lru_cache(maxsize=None)
def module_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Canonical key -> weight shape of every Linear / Conv2d of the full-size model (meta device)."""
    from lcm_lora.lcm_core.model_configs import build_text_encoders, build_unet

    shapes = {}
    models = {"unet": build_unet(arch), **build_text_encoders(arch)}
    for comp, model in models.items():
        for name, mod in model.named_modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                if comp != "unet" and not name.startswith("text_model."):
                    name = "text_model." + name
                shapes[f"{comp}.{name}"] = tuple(mod.weight.shape)
    return shapes


def select_modules(shapes: dict, unet_prefixes: tuple[str, ...], te_layers: tuple[int, ...] = (),
                   te_components: tuple[str, ...] = ("text_encoder",)) -> list[str]:
    """LCM-LoRA target modules under ``unet_prefixes`` plus text-encoder layers ``te_layers``."""
    keys = []
    for key in shapes:
        comp, path = key.split(".", 1)
        if comp == "unet":
            if any(path.startswith(p) for p in unet_prefixes) and any(path.endswith(s) for s in LCM_TARGET_SUFFIXES):
                keys.append(key)
        elif comp in te_components:
            for layer in te_layers:
                if any(path == f"text_model.encoder.layers.{layer}.{s}" for s in TE_TARGET_SUFFIXES):
                    keys.append(key)
    return sorted(keys)


def random_lora(arch: str, keys: list[str], shapes: dict, rank: int, seed: int, up_std: float = 0.02,
                dtype=torch.float32) -> RandomLora:
    g = torch.Generator().manual_seed(seed)
    down, up = {}, {}
    for key in keys:
        shape = shapes[key]
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        if len(shape) == 4:
            down[key] = (torch.randn(rank, shape[1], shape[2], shape[3], generator=g) / fan_in**0.5).to(dtype)
            up[key] = (torch.randn(shape[0], rank, 1, 1, generator=g) * up_std).to(dtype)
        else:
            down[key] = (torch.randn(rank, shape[1], generator=g) / fan_in**0.5).to(dtype)
            up[key] = (torch.randn(shape[0], rank, generator=g) * up_std).to(dtype)
    return RandomLora(arch, rank, rank / 2, down, up)


# -- writers ----------------------------------------------------------------------------------
def kohya_name(key: str, arch: str) -> str:
    comp, path = key.split(".", 1)
    if comp == "unet":
        prefix = "lora_unet_"
    elif arch in ("sdxl", "ssd1b"):
        prefix = "lora_te1_" if comp == "text_encoder" else "lora_te2_"
    else:
        prefix = "lora_te_"
    return prefix + path.replace(".", "_")


def write_kohya(lora: RandomLora, path: Path) -> Path:
    sd = {}
    for key in lora.down:
        name = kohya_name(key, lora.arch)
        sd[f"{name}.lora_down.weight"] = lora.down[key].contiguous()
        sd[f"{name}.lora_up.weight"] = lora.up[key].contiguous()
        sd[f"{name}.alpha"] = torch.tensor(float(lora.alpha))
    save_file(sd, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(lora.rank),
                                       "ss_network_alpha": str(lora.alpha)})
    return path


def _peft_layers(lora: RandomLora, comp: str) -> dict[str, torch.Tensor]:
    """peft-style ``<path>.lora_A.weight`` / ``lora_B.weight`` for one component, alpha folded into B."""
    out = {}
    scale = lora.alpha / lora.rank
    for key in lora.down:
        c, path = key.split(".", 1)
        if c != comp:
            continue
        out[f"{path}.lora_A.weight"] = lora.down[key].contiguous()
        out[f"{path}.lora_B.weight"] = (lora.up[key] * scale).contiguous()
    return out


def write_diffusers(lora: RandomLora, folder: Path, weight_name: str = "pytorch_lora_weights.safetensors") -> Path:
    """Written by diffusers' own ``save_lora_weights`` (scale folded into up: no alpha in this format)."""
    folder.mkdir(parents=True, exist_ok=True)
    te = _peft_layers(lora, "text_encoder") or None
    if lora.arch in ("sdxl", "ssd1b"):
        from diffusers import StableDiffusionXLPipeline

        StableDiffusionXLPipeline.save_lora_weights(
            str(folder), unet_lora_layers=_peft_layers(lora, "unet"), text_encoder_lora_layers=te,
            text_encoder_2_lora_layers=_peft_layers(lora, "text_encoder_2") or None, weight_name=weight_name)
    else:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=_peft_layers(lora, "unet"),
                                                  text_encoder_lora_layers=te, weight_name=weight_name)
    return folder / weight_name


def write_peft(lora: RandomLora, folder: Path, component: str = "unet") -> Path:
    """A peft adapter folder for one component; ``lora_alpha`` in the config (not folded)."""
    from peft import LoraConfig

    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(k.split(".", 1)[1] for k in lora.down if k.startswith(component + "."))
    cfg = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=paths, init_lora_weights=False)
    cfg.save_pretrained(str(folder))
    sd = {}
    for key in lora.down:
        c, path = key.split(".", 1)
        if c == component:
            sd[f"base_model.model.{path}.lora_A.weight"] = lora.down[key].contiguous()
            sd[f"base_model.model.{path}.lora_B.weight"] = lora.up[key].contiguous()
    save_file(sd, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    json.loads((folder / "adapter_config.json").read_text())  # written by peft
    return folder / "adapter_model.safetensors"


def write_comfy(lora: RandomLora, path: Path, keymap: dict) -> Path:
    """ComfyUI layout; ``keymap`` = ComfyUI's ``{kohya name: [model weight key, shape]}`` for unet and clip."""
    sd = {}
    for key in lora.down:
        name = kohya_name(key, lora.arch)
        table = keymap["unet"] if name.startswith("lora_unet_") else keymap["clip"]
        target = table[name][0][: -len(".weight")]
        if not target.startswith("diffusion_model."):
            target = "text_encoders." + target
        sd[f"{target}.lora_down.weight"] = lora.down[key].contiguous()
        sd[f"{target}.lora_up.weight"] = lora.up[key].contiguous()
        sd[f"{target}.alpha"] = torch.tensor(float(lora.alpha))
    save_file(sd, str(path))
    return path
