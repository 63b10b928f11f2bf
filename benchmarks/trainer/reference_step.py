"""Run the diffusers reference training step itself, read from ``$LCM_REFERENCE_SCRIPT``.

The reference (``examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py``) cannot be
imported as a module here: it imports webdataset/braceexpand/torchvision at the top and keeps its
training step inline in ``main()``. So this file *executes the reference's own source*:

* its helper definitions (``DDIMSolver``, ``scalings_for_boundary_conditions``,
  ``get_predicted_original_sample``, ``get_predicted_noise``, ``extract_into_tensor``,
  ``append_dims``, ``encode_prompt``) are compiled from the script's AST;
* the body of its training loop — the ``with accelerator.accumulate(unet):`` block, steps 1-11
  (encode, sample t/ω/noise, student, two teacher passes, DDIM step, target, loss, backward,
  clip, optimizer and LR-scheduler step) — is compiled from the AST and executed unchanged;
* the objects it refers to are set up as its ``main()`` does (accelerate ``Accelerator``,
  ``get_peft_model`` with its default targets, separate frozen ``teacher_unet``, AdamW over
  ``unet.parameters()``, ``get_scheduler``, ``uncond_prompt_embeds`` of ""), but from a local
  teacher folder. Batches are handed over in memory (the reference's webdataset loader is not
  used), which can only flatter the reference.

Only the SD 1.x/2.x script (``train_lcm_distill_lora_sd_wds.py``) is supported.
Nothing of the reference is copied into this repository; the path comes from the environment.
"""
from __future__ import annotations

import ast
import functools
import os
import random
import types
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HELPERS = ("DDIMSolver", "scalings_for_boundary_conditions", "get_predicted_original_sample", "get_predicted_noise",
           "extract_into_tensor", "append_dims", "encode_prompt")


class ReferenceUnavailable(RuntimeError):
    pass


def reference_path() -> Path:
    path = os.environ.get("LCM_REFERENCE_SCRIPT")
    if not path:
        raise ReferenceUnavailable("LCM_REFERENCE_SCRIPT is not set (path to diffusers' train_lcm_distill_lora_sd_wds.py)")
    path = Path(path)
    if not path.is_file():
        raise ReferenceUnavailable(f"LCM_REFERENCE_SCRIPT={path} does not exist")
    return path


def load_reference(path: Path | None = None) -> tuple[dict, types.CodeType]:
    """(namespace with the reference helpers, compiled training-step block)."""
    path = path or reference_path()
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    if "teacher_unet" not in source or "def main" not in source:
        raise ReferenceUnavailable(f"{path}: not the SD LoRA reference (train_lcm_distill_lora_sd_wds.py)")
    helpers = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in HELPERS]
    missing = set(HELPERS) - {n.name for n in helpers}
    if missing:
        raise ReferenceUnavailable(f"{path}: helpers not found: {sorted(missing)}")
    namespace = {"torch": torch, "np": np, "F": F, "random": random, "functools": functools, "__name__": "lcm_reference"}
    exec(compile(ast.Module(body=helpers, type_ignores=[]), str(path), "exec"), namespace)

    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    block = None
    for node in ast.walk(main):
        if isinstance(node, ast.With) and any(
            isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "attr", "") == "accumulate"
            for item in node.items
        ):
            block = node
            break
    if block is None:
        raise ReferenceUnavailable(f"{path}: training-step block 'with accelerator.accumulate(unet):' not found")
    code = compile(ast.Module(body=[block], type_ignores=[]), str(path), "exec")
    return namespace, code


class ReferenceTrainer:
    """The reference's models, optimizer and accelerator around a local tiny/random teacher folder."""

    def __init__(self, teacher_dir: str | os.PathLike, *, rank: int, lr: float = 1e-4, batch_size: int, w_min: float = 3.0,
                 w_max: float = 15.0, loss_type: str = "huber", huber_c: float = 0.001, num_ddim_timesteps: int = 50,
                 mixed_precision: str = "no", teacher_autocast: bool = True, device: str | None = None,
                 gradient_checkpointing: bool = False, weight_decay: float = 0.0):
        from accelerate import Accelerator
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig, get_peft_model
        from transformers import CLIPTextModel, CLIPTokenizer

        self.ns, self.code = load_reference()
        teacher_dir = Path(teacher_dir)
        cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
        accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision=mixed_precision, cpu=cpu)
        noise_scheduler = DDPMScheduler.from_pretrained(teacher_dir, subfolder="scheduler")
        alpha_schedule = torch.sqrt(noise_scheduler.alphas_cumprod)
        sigma_schedule = torch.sqrt(1 - noise_scheduler.alphas_cumprod)
        solver = self.ns["DDIMSolver"](noise_scheduler.alphas_cumprod.numpy(), timesteps=noise_scheduler.config.num_train_timesteps,
                                       ddim_timesteps=num_ddim_timesteps)
        tokenizer = CLIPTokenizer.from_pretrained(teacher_dir / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(teacher_dir / "text_encoder")
        vae = AutoencoderKL.from_pretrained(teacher_dir, subfolder="vae")
        teacher_unet = UNet2DConditionModel.from_pretrained(teacher_dir, subfolder="unet")
        vae.requires_grad_(False)
        text_encoder.requires_grad_(False)
        teacher_unet.requires_grad_(False)
        unet = UNet2DConditionModel.from_pretrained(teacher_dir, subfolder="unet")
        unet.train()
        targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                   "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]  # the script's default list
        unet = get_peft_model(unet, LoraConfig(r=rank, target_modules=targets, lora_alpha=rank, lora_dropout=0.0))
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
        vae.to(accelerator.device)
        text_encoder.to(accelerator.device, dtype=weight_dtype)
        teacher_unet.to(accelerator.device)
        alpha_schedule = alpha_schedule.to(accelerator.device)
        sigma_schedule = sigma_schedule.to(accelerator.device)
        solver = solver.to(accelerator.device)
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, eps=1e-8)
        lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=10**9)
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
        uncond_ids = tokenizer([""] * batch_size, return_tensors="pt", padding="max_length",
                               max_length=tokenizer.model_max_length).input_ids.to(accelerator.device)
        uncond_prompt_embeds = text_encoder(uncond_ids)[0]
        encode_prompt = self.ns["encode_prompt"]

        def compute_embeddings_fn(prompt_batch):
            return {"prompt_embeds": encode_prompt(prompt_batch, text_encoder, tokenizer, 0, True)}

        args = types.SimpleNamespace(vae_encode_batch_size=32, num_ddim_timesteps=num_ddim_timesteps, timestep_scaling_factor=10.0,
                                     w_min=w_min, w_max=w_max, loss_type=loss_type, huber_c=huber_c, max_grad_norm=1.0)
        self.ns.update(
            accelerator=accelerator, unet=unet, teacher_unet=teacher_unet, vae=vae, text_encoder=text_encoder,
            compute_embeddings_fn=compute_embeddings_fn, weight_dtype=weight_dtype, args=args, noise_scheduler=noise_scheduler,
            solver=solver, alpha_schedule=alpha_schedule, sigma_schedule=sigma_schedule, optimizer=optimizer,
            lr_scheduler=lr_scheduler, uncond_prompt_embeds=uncond_prompt_embeds,
            # the reference: torch.autocast(accelerator.device.type) around the teacher passes (fp16 on CUDA, bf16 on CPU)
            autocast_ctx=torch.autocast(accelerator.device.type) if teacher_autocast else nullcontext(),
        )
        self.accelerator = accelerator
        self.device = accelerator.device

    def step(self, images: torch.Tensor, captions: list[str]) -> dict:
        """Execute the reference's training-step block once; return its local variables."""
        self.ns["batch"] = (images, list(captions))
        exec(self.code, self.ns)
        return self.ns
