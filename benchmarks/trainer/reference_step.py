"""Run the diffusers reference training step itself, read from the reference script's own source.

Two diffusers scripts (``examples/consistency_distillation/``) are supported; which one a path is,
is detected from its content (:func:`detect_script`):

* ``sd``: ``train_lcm_distill_lora_sd_wds.py`` (SD 1.x/2.x), path in ``$LCM_REFERENCE_SCRIPT``;
* ``sdxl``: ``train_lcm_distill_lora_sdxl.py``, path in ``$LCM_REFERENCE_SCRIPT_SDXL``;
* ``tcd_sd`` / ``tcd_sdxl``: rootonchair/consistency_models_distill ``tcd/train_tcd_distill_lora_sd_wds.py``
  / ``tcd/train_tcd_distill_lora_sdxl.py`` (TCD-LoRA, the same scripts with the TCD map), paths in
  ``$TCD_REFERENCE_SCRIPT`` / ``$TCD_REFERENCE_SCRIPT_SDXL``; their extra helpers
  ``get_predicted_original_sample_tcd`` and ``randint`` are compiled the same way;
* ``pcm_sd``: G-U-N/Phased-Consistency-Model ``code/text_to_image_sd15/train_pcm_lora_sd15.py`` (PCM-LoRA,
  ``$PCM_REFERENCE_SCRIPT``): helpers ``DDIMSolver`` (with ``ddim_style_multiphase_pred``),
  ``scalings_for_boundary_conditions_online/target``, ``predicted_origin``; ``args.multiphase`` = phases,
  ``args.not_apply_cfg_solver`` = not solver guidance; its teacher runs under a hard-coded
  ``torch.autocast("cuda")`` (a no-op on the CPU, where the parity tests run);
* ``pcm_adv_sd`` / ``pcm_adv_sdxl``: PCM's adversarial scripts ``code/text_to_image_sd15/train_pcm_lora_sd15_adv.py`` /
  ``code/text_to_image_sdxl/train_pcm_lora_sdxl_adv.py`` (``$PCM_ADV_REFERENCE_SCRIPT`` /
  ``$PCM_ADV_SDXL_REFERENCE_SCRIPT``), with ``discriminator_sd15.py`` / ``discriminator_sdxl.py`` and
  ``scheduling_ddpm_modified.py`` read from the script's folder (:func:`load_pcm_adversarial`): the reference's own
  ``Discriminator(teacher_unet)`` (``adapter_channel_dims`` = the tiny UNet's channels), its ``noise_travel``
  scheduler, its heads' AdamW; ``global_step`` (``set_global_step``) picks the D (even) or G (odd) branch;
  ``torch.randn_like`` draws of the block are recorded (:class:`RecordingTorch`). SDXL: :class:`ReferenceTrainerPcmSDXL`;
* ``tscd_sd`` / ``tscd_sdxl``: rootonchair ``tscd/train_tscd_distill_lora_sd_wds.py`` /
  ``tscd/train_tscd_distill_lora_sdxl.py`` (Hyper-SD TSCD-LoRA, ``$TSCD_REFERENCE_SCRIPT[_SDXL]``; the TCD
  helpers plus ``k_list`` / ``global_step`` / ``args.stage_steps`` / ``args.stage_segments`` as its ``main()``
  sets them; ``set_global_step`` on either trainer).

Neither can be imported as a module here: they import webdataset/braceexpand/torchvision/datasets
at the top and keep their training step inline in ``main()``. So this file *executes the
reference's own source*, never its module top level:

* its helper definitions (``DDIMSolver``, ``scalings_for_boundary_conditions``,
  ``get_predicted_original_sample``, ``get_predicted_noise``, ``extract_into_tensor``,
  ``append_dims``, ``encode_prompt``; for SDXL also ``import_model_class_from_model_name_or_path``
  and the ``compute_embeddings`` function nested in ``main()``) are compiled from the script's AST;
* the body of its training loop — the ``with accelerator.accumulate(unet):`` block, steps 1-11
  (encode, sample t/ω/noise, student, two teacher passes, DDIM step, target, loss, backward,
  clip, optimizer and LR-scheduler step) — is compiled from the AST and executed unchanged;
* the objects it refers to are set up as its ``main()`` does, but from a local teacher folder.
  SD (:class:`ReferenceTrainer`): accelerate ``Accelerator``, ``get_peft_model`` with its default
  targets, a separate frozen ``teacher_unet``, AdamW over ``unet.parameters()``, ``get_scheduler``,
  ``uncond_prompt_embeds`` of "". SDXL (:class:`ReferenceTrainerSDXL`): ``Accelerator(split_batches=True)``,
  two tokenizers (``AutoTokenizer``, slow) and two text encoders (classes from their configs),
  one UNet with ``unet.add_adapter(LoraConfig)`` whose adapters the step disables for the teacher
  passes, ``params_to_optimize = filter(requires_grad, unet.parameters())`` handed to AdamW (so,
  as in the script, the iterator is exhausted when the step clips with it: **the SDXL reference's
  gradient clipping is a no-op**), ``compute_embeddings_fn`` = ``functools.partial(compute_embeddings,
  ...)`` (pooled ``text_embeds`` + ``time_ids`` from original size, crop top-left and
  ``(resolution, resolution)``); its unconditional branch is built inside the step (all-zero
  prompt and pooled embeddings, same time ids).

``float64=True`` runs the same block in float64 (:func:`run_in_float64`; its ``.float()`` casts become ``.double()``,
recorded in ``reference_repairs``; for PCM's adversarial kinds the discriminator module's too, and its heads run in
float64): the exact value of the step, which the parity tests compare with ours in float64 where float32 rounding of
the pseudo-Huber gradient (≈ 1e-4) would hide a difference.

Batches are handed over in memory (the reference's data loaders are not used), which can only
flatter the reference. Nothing of the reference is copied into this repository; the paths come
from the environment.
"""
from __future__ import annotations

import ast
import copy
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
SDXL_HELPERS = HELPERS + ("import_model_class_from_model_name_or_path",)
SDXL_NESTED = ("compute_embeddings",)  # defined inside main(); refers to args, accelerator, weight_dtype
ENV = {"sd": "LCM_REFERENCE_SCRIPT", "sdxl": "LCM_REFERENCE_SCRIPT_SDXL",
       "tcd_sd": "TCD_REFERENCE_SCRIPT", "tcd_sdxl": "TCD_REFERENCE_SCRIPT_SDXL",
       "pcm_sd": "PCM_REFERENCE_SCRIPT", "tscd_sd": "TSCD_REFERENCE_SCRIPT", "tscd_sdxl": "TSCD_REFERENCE_SCRIPT_SDXL",
       "pcm_adv_sd": "PCM_ADV_REFERENCE_SCRIPT", "pcm_adv_sdxl": "PCM_ADV_SDXL_REFERENCE_SCRIPT"}
SCRIPT_NAMES = {"sd": "train_lcm_distill_lora_sd_wds.py", "sdxl": "train_lcm_distill_lora_sdxl.py",
                "tcd_sd": "train_tcd_distill_lora_sd_wds.py", "tcd_sdxl": "train_tcd_distill_lora_sdxl.py",
                "pcm_sd": "train_pcm_lora_sd15.py", "tscd_sd": "train_tscd_distill_lora_sd_wds.py",
                "tscd_sdxl": "train_tscd_distill_lora_sdxl.py", "pcm_adv_sd": "train_pcm_lora_sd15_adv.py",
                "pcm_adv_sdxl": "train_pcm_lora_sdxl_adv.py"}
# rootonchair/consistency_models_distill tcd/*: the diffusers LoRA scripts with the TCD map and s draw
# (and, in the SD one, without the boundary scalings); tscd/* likewise with the segmented s draw
TCD_HELPERS = ("get_predicted_original_sample_tcd", "randint")
# G-U-N/Phased-Consistency-Model code/text_to_image_sd15/train_pcm_lora_sd15.py
PCM_HELPERS = ("DDIMSolver", "scalings_for_boundary_conditions_online", "scalings_for_boundary_conditions_target",
               "predicted_origin", "extract_into_tensor", "append_dims", "encode_prompt")
# G-U-N/Phased-Consistency-Model's adversarial scripts: the discriminator module and the modified DDPM
# scheduler (``noise_travel``) sit next to each script, which imports them by plain name
PCM_ADV_MODULES = {"pcm_adv_sd": "discriminator_sd15.py", "pcm_adv_sdxl": "discriminator_sdxl.py"}
PCM_ADV_DEFS = ("modified_forward", "DiscriminatorHead", "Discriminator")


class ReferenceUnavailable(RuntimeError):
    pass


def detect_script(source: str) -> str | None:
    """``"sd"`` / ``"sdxl"`` (diffusers LCM-LoRA) or ``"tcd_sd"`` / ``"tcd_sdxl"`` (rootonchair TCD-LoRA)
    from the script's content, ``None`` if it is none of these references."""
    if "def main" in source and "from discriminator_sd" in source and "noise_travel" in source:  # PCM adversarial
        if "def ddim_style_multiphase_pred" in source and "from discriminator_sd15 import" in source:
            return "pcm_adv_sd"
        if "def ddim_style_multiphase(" in source and "from discriminator_sdxl import" in source:
            return "pcm_adv_sdxl"
        return None
    if "def main" not in source or "accelerator.accumulate(unet)" not in source:
        return None
    if "def ddim_style_multiphase_pred" in source:  # PCM: only the SD 1.5 LoRA script is supported
        sd = "teacher_unet" in source and "StableDiffusionPipeline" in source and "text_encoder_two" not in source
        return "pcm_sd" if sd else None
    prefix = "tcd_" if "def get_predicted_original_sample_tcd" in source else ""
    if prefix and "stage_segments" in source:
        prefix = "tscd_"
    if "StableDiffusionXLPipeline" in source and "text_encoder_two" in source and "disable_adapters" in source:
        return prefix + "sdxl"
    if "teacher_unet" in source and "StableDiffusionPipeline" in source:
        return prefix + "sd"
    return None


def reference_path(kind: str = "sd") -> Path:
    """The reference script of ``kind`` ("sd" or "sdxl") named by its environment variable."""
    var = ENV[kind]
    path = os.environ.get(var)
    if not path:
        raise ReferenceUnavailable(f"{var} is not set (path to the reference script {SCRIPT_NAMES[kind]})")
    path = Path(path)
    if not path.is_file():
        raise ReferenceUnavailable(f"{var}={path} does not exist")
    return path


class _RepairTcdTargetCall(ast.NodeTransformer):
    """``tcd/train_tcd_distill_lora_sdxl.py`` (only that one of the five TCD scripts) calls
    ``get_predicted_original_sample_tcd(target_noise_pred, timesteps, x_prev, ...)`` for the target
    with six arguments — ``end_timesteps`` is missing, so the published script raises ``TypeError``
    on its first step and cannot be run as is. The repair inserts ``end_timesteps`` as the third
    argument, as the student call two screens above and the same call in the SD, SDXL-wds and
    full-model TCD scripts have it. Only a six-argument call is touched; ``repaired`` counts them."""

    def __init__(self):
        self.repaired = 0

    def visit_Call(self, node):
        self.generic_visit(node)
        if getattr(node.func, "id", None) == "get_predicted_original_sample_tcd" and len(node.args) == 6 and not node.keywords:
            node.args.insert(2, ast.Name(id="end_timesteps", ctx=ast.Load()))
            self.repaired += 1
        return node


class _Float64Casts(ast.NodeTransformer):
    """For a float64 run only (``load_reference(..., float64=True)``): the block's ``x.float()`` casts — there to
    compute the loss in at least float32 when the models run in fp16/bf16 — become ``x.double()``, so that a float64
    run stays float64 to the loss. ``replaced`` counts them."""

    def __init__(self):
        self.replaced = 0

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "float" and not node.args and not node.keywords:
            node.func.attr = "double"
            self.replaced += 1
        return node


def _compile_defs(nodes: list, path: Path, namespace: dict) -> None:
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)


def load_reference(path: Path | None = None, kind: str | None = None, float64: bool = False) -> tuple[dict, types.CodeType]:
    """(namespace with the reference helpers, compiled training-step block).

    ``kind`` ("sd"/"sdxl") picks the environment variable when ``path`` is not given and must
    match the script's content when given; by default ``sd``. ``float64``: the block's ``.float()`` casts
    become ``.double()`` (:class:`_Float64Casts`; recorded in ``reference_repairs``).
    """
    path = path or reference_path(kind or "sd")
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    found = detect_script(source)
    if found is None:
        raise ReferenceUnavailable(f"{path}: none of {', '.join(SCRIPT_NAMES.values())} (LCM-/TCD-LoRA reference)")
    if kind is not None and found != kind:
        raise ReferenceUnavailable(f"{path}: is the {found} reference ({SCRIPT_NAMES[found]}), expected {SCRIPT_NAMES[kind]}")
    sdxl = found.endswith("sdxl")
    names = SDXL_HELPERS if sdxl else HELPERS
    if found.startswith(("tcd_", "tscd_")):  # the TCD/TSCD SD scripts drop the (unused) boundary scalings
        names = tuple(n for n in names if n != "scalings_for_boundary_conditions") + TCD_HELPERS
    if found in ("pcm_sd", "pcm_adv_sd", "pcm_adv_sdxl"):
        names = PCM_HELPERS
    helpers = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
    missing = set(names) - {n.name for n in helpers}
    if missing:
        raise ReferenceUnavailable(f"{path}: helpers not found: {sorted(missing)}")
    namespace = {"torch": torch, "np": np, "F": F, "random": random, "functools": functools, "copy": copy,
                 "__name__": "lcm_reference"}
    if sdxl:
        from transformers import PretrainedConfig

        namespace["PretrainedConfig"] = PretrainedConfig
    _compile_defs(helpers, path, namespace)

    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    if sdxl:
        nested = [n for n in main.body if isinstance(n, ast.FunctionDef) and n.name in SDXL_NESTED]
        if {n.name for n in nested} != set(SDXL_NESTED):
            raise ReferenceUnavailable(f"{path}: main() has no nested {SDXL_NESTED}")
        _compile_defs(nested, path, namespace)  # module-level here: its free names come from the namespace
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
    repairs = []
    if found.startswith(("tcd_", "tscd_")):
        fixer = _RepairTcdTargetCall()
        block = ast.fix_missing_locations(fixer.visit(block))
        if fixer.repaired:
            repairs.append(f"get_predicted_original_sample_tcd: end_timesteps inserted in {fixer.repaired} call(s)")
    if float64:
        casts = _Float64Casts()
        block = ast.fix_missing_locations(casts.visit(block))
        repairs.append(f"float64 run: .float() -> .double() in {casts.replaced} place(s)")
    code = compile(ast.Module(body=[block], type_ignores=[]), str(path), "exec")
    namespace["reference_kind"] = found
    namespace["reference_repairs"] = repairs  # departures from the script's text (documented above)
    return namespace, code


def run_in_float64(ns: dict, alphas_cumprod: torch.Tensor, num_ddim_timesteps: int, timesteps: int) -> None:
    """Turn a set-up reference trainer's namespace into a float64 run: its UNets, VAE and text encoders (in place, so
    the optimizer and the LoRA parameters handed out stay the same objects), ``weight_dtype``, the unconditional
    embeddings, and the schedules rebuilt from the float64 ``alphas_cumprod`` (the float32 values upcast: the same
    numbers our float64 step uses). With the block's ``.float()`` casts made ``.double()`` (``load_reference(...,
    float64=True)``) the whole step runs in float64: the exact value its float32 run rounds."""
    alphas = alphas_cumprod.double()
    for name in ("unet", "teacher_unet", "vae", "text_encoder"):
        if name in ns:
            ns[name].double()
    embed = ns.get("compute_embeddings_fn")
    for encoder in (getattr(embed, "keywords", None) or {}).get("text_encoders", []):
        encoder.double()
    for name in ("uncond_prompt_embeds", "uncond_pooled_prompt_embeds"):
        if name in ns:
            ns[name] = ns[name].double()
    ns["weight_dtype"] = torch.float64
    ns["solver"] = ns["DDIMSolver"](alphas.numpy(), timesteps=timesteps, ddim_timesteps=num_ddim_timesteps)
    ns["alpha_schedule"] = torch.sqrt(alphas)
    ns["sigma_schedule"] = torch.sqrt(1 - alphas)


class ReferenceTrainer:
    """The reference's models, optimizer and accelerator around a local tiny/random teacher folder."""

    def __init__(self, teacher_dir: str | os.PathLike, *, rank: int, lr: float = 1e-4, batch_size: int, w_min: float = 3.0,
                 w_max: float = 15.0, loss_type: str = "huber", huber_c: float = 0.001, num_ddim_timesteps: int = 50,
                 mixed_precision: str = "no", teacher_autocast: bool = True, device: str | None = None,
                 gradient_checkpointing: bool = False, weight_decay: float = 0.0, kind: str = "sd", phases: int = 4,
                 solver_guidance: bool = True, stage_segments: str = "8,4,2,1", stage_steps: int = 1000,
                 adv_weight: float = 0.1, adv_lr: float = 1e-5, float64: bool = False):
        from accelerate import Accelerator
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig, get_peft_model
        from transformers import CLIPTextModel, CLIPTokenizer

        self.ns, self.code = load_reference(kind=kind, float64=float64)  # "sd" (LCM), "tcd_sd", "pcm_sd" or "tscd_sd"
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
                                     w_min=w_min, w_max=w_max, loss_type=loss_type, huber_c=huber_c, max_grad_norm=1.0,
                                     multiphase=phases, not_apply_cfg_solver=not solver_guidance,  # PCM
                                     stage_segments=stage_segments, stage_steps=stage_steps)  # TSCD
        # TSCD main(): k_list from --stage_segments, global_step counted by the loop (set_global_step)
        self.ns.update(k_list=[int(i) for i in stage_segments.split(",")], global_step=0)
        self.ns.update(
            accelerator=accelerator, unet=unet, teacher_unet=teacher_unet, vae=vae, text_encoder=text_encoder,
            compute_embeddings_fn=compute_embeddings_fn, weight_dtype=weight_dtype, args=args, noise_scheduler=noise_scheduler,
            solver=solver, alpha_schedule=alpha_schedule, sigma_schedule=sigma_schedule, optimizer=optimizer,
            lr_scheduler=lr_scheduler, uncond_prompt_embeds=uncond_prompt_embeds,
            # the reference: torch.autocast(accelerator.device.type) around the teacher passes (fp16 on CUDA, bf16 on CPU)
            autocast_ctx=torch.autocast(accelerator.device.type) if teacher_autocast else nullcontext(),
        )
        if float64:  # the exact step (run_in_float64)
            if mixed_precision != "no":
                raise ValueError("float64 runs: not with mixed precision")
            run_in_float64(self.ns, noise_scheduler.alphas_cumprod, num_ddim_timesteps, noise_scheduler.config.num_train_timesteps)
        if kind == "pcm_adv_sd":  # train_pcm_lora_sd15_adv.py main(): its scheduler, Discriminator(teacher_unet), optimizer
            args.adv_weight, args.adv_lr, args.adam_weight_decay, args.adam_epsilon = adv_weight, adv_lr, weight_decay, 1e-8
            self._setup_adversarial(kind, teacher_dir, teacher_unet, accelerator, args, float64)
        self.accelerator = accelerator
        self.device = accelerator.device

    def _setup_adversarial(self, kind, teacher_dir, teacher_unet, accelerator, args, float64: bool = False):
        disc_ns, scheduler_cls = load_pcm_adversarial(reference_path(kind), kind, float64)
        noise_scheduler = scheduler_cls.from_pretrained(teacher_dir, subfolder="scheduler")  # with noise_travel
        discriminator = disc_ns["Discriminator"](teacher_unet, adapter_channel_dims=discriminator_channels(teacher_unet, kind))
        if float64:  # its heads too (the frozen UNet already is)
            discriminator.double()
        self.ns["reference_repairs"].extend(disc_ns["reference_repairs"])
        discriminator.unet.requires_grad_(False)
        discriminator_params = []
        for param in discriminator.heads.parameters():
            param.requires_grad = True
            discriminator_params.append(param)
        # SD 1.5: --adam_weight_decay for the heads too; SDXL: a fixed 1e-3
        weight_decay = args.adam_weight_decay if kind == "pcm_adv_sd" else 1e-3
        optimizer_discriminator = torch.optim.AdamW(discriminator_params, lr=args.adv_lr, betas=(0.0, 0.999),
                                                    weight_decay=weight_decay, eps=args.adam_epsilon)
        discriminator, optimizer_discriminator = accelerator.prepare(discriminator, optimizer_discriminator)
        self.recording_torch = RecordingTorch()
        self.ns.update(noise_scheduler=noise_scheduler, discriminator=discriminator, torch=self.recording_torch,
                       optimizer_discriminator=optimizer_discriminator,  # the SD 1.5 script's name
                       discriminator_optimizer=optimizer_discriminator)  # the SDXL script's name
        self.discriminator = accelerator.unwrap_model(discriminator)

    def set_global_step(self, step: int) -> None:
        """The optimizer step the next :meth:`step` runs as (TSCD's stage is ``global_step // stage_steps``;
        the block itself does not count: the loop around it does)."""
        self.ns["global_step"] = int(step)

    def step(self, images: torch.Tensor, captions: list[str]) -> dict:
        """Execute the reference's training-step block once; return its local variables."""
        self.ns["batch"] = (images, list(captions))
        if "recording_torch" in self.__dict__:
            self.recording_torch.draws.clear()
        exec(self.code, self.ns)
        return self.ns


class ReferenceTrainerSDXL:
    """The SDXL reference's models, optimizer and accelerator around a local tiny/random SDXL-type folder
    (``unet/`` with ``addition_embed_type="text_time"``, ``text_encoder[_2]/``, ``tokenizer[_2]/``, ``vae/``)."""

    def __init__(self, teacher_dir: str | os.PathLike, *, rank: int, lr: float = 1e-4, resolution: int, w_min: float = 3.0,
                 w_max: float = 15.0, loss_type: str = "huber", huber_c: float = 0.001, num_ddim_timesteps: int = 50,
                 mixed_precision: str = "no", device: str | None = None, gradient_checkpointing: bool = False,
                 weight_decay: float = 0.0, vae_encode_batch_size: int = 8, lora_alpha: float | None = None,
                 max_grad_norm: float = 1.0, kind: str = "sdxl", stage_segments: str = "8,4,2,1", stage_steps: int = 1000,
                 float64: bool = False):
        from accelerate import Accelerator
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig
        from transformers import AutoTokenizer

        self.ns, self.code = load_reference(reference_path(kind), kind=kind, float64=float64)  # "sdxl" (LCM), "tcd_sdxl", "tscd_sdxl"
        ns = self.ns
        teacher = os.fspath(teacher_dir)
        cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
        # main(): split_batches=True; one process, no accumulation here
        accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision=mixed_precision, split_batches=True, cpu=cpu)
        noise_scheduler = DDPMScheduler.from_pretrained(teacher, subfolder="scheduler")
        alpha_schedule = torch.sqrt(noise_scheduler.alphas_cumprod)
        sigma_schedule = torch.sqrt(1 - noise_scheduler.alphas_cumprod)
        solver = ns["DDIMSolver"](noise_scheduler.alphas_cumprod.numpy(), timesteps=noise_scheduler.config.num_train_timesteps,
                                  ddim_timesteps=num_ddim_timesteps)
        tokenizer_one = AutoTokenizer.from_pretrained(teacher, subfolder="tokenizer", use_fast=False)
        tokenizer_two = AutoTokenizer.from_pretrained(teacher, subfolder="tokenizer_2", use_fast=False)
        cls_one = ns["import_model_class_from_model_name_or_path"](teacher, None)
        cls_two = ns["import_model_class_from_model_name_or_path"](teacher, None, subfolder="text_encoder_2")
        text_encoder_one = cls_one.from_pretrained(teacher, subfolder="text_encoder")
        text_encoder_two = cls_two.from_pretrained(teacher, subfolder="text_encoder_2")
        vae = AutoencoderKL.from_pretrained(teacher, subfolder="vae")
        vae.requires_grad_(False)
        text_encoder_one.requires_grad_(False)
        text_encoder_two.requires_grad_(False)
        unet = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet")
        unet.requires_grad_(False)
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
        unet.to(accelerator.device, dtype=weight_dtype)
        vae.to(accelerator.device, dtype=torch.float32)  # no --pretrained_vae_model_name_or_path: VAE stays float32
        text_encoder_one.to(accelerator.device, dtype=weight_dtype)
        text_encoder_two.to(accelerator.device, dtype=weight_dtype)
        targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                   "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]  # the script's default list
        unet.add_adapter(LoraConfig(r=rank, target_modules=targets, lora_alpha=lora_alpha if lora_alpha is not None else rank,
                                    lora_dropout=0.0))
        alpha_schedule = alpha_schedule.to(accelerator.device)
        sigma_schedule = sigma_schedule.to(accelerator.device)
        solver = solver.to(accelerator.device)
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        # main() step 12: a one-shot iterator, consumed here; step 11 later clips with it (clips nothing)
        params_to_optimize = filter(lambda p: p.requires_grad, unet.parameters())
        optimizer = torch.optim.AdamW(params_to_optimize, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, eps=1e-8)
        if mixed_precision == "fp16":
            cast_training_params(unet, dtype=torch.float32)
        lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=10**9)
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
        unet.train()
        args = types.SimpleNamespace(resolution=resolution, vae_encode_batch_size=vae_encode_batch_size,
                                     num_ddim_timesteps=num_ddim_timesteps, timestep_scaling_factor=10.0, w_min=w_min, w_max=w_max,
                                     loss_type=loss_type, huber_c=huber_c, max_grad_norm=max_grad_norm,
                                     pretrained_vae_model_name_or_path=None,
                                     stage_segments=stage_segments, stage_steps=stage_steps)  # TSCD
        ns.update(k_list=[int(i) for i in stage_segments.split(",")], global_step=0)  # TSCD main()
        ns.update(accelerator=accelerator, unet=unet, vae=vae, weight_dtype=weight_dtype, args=args,
                  noise_scheduler=noise_scheduler, solver=solver, alpha_schedule=alpha_schedule, sigma_schedule=sigma_schedule,
                  optimizer=optimizer, lr_scheduler=lr_scheduler, params_to_optimize=params_to_optimize)
        ns["compute_embeddings_fn"] = functools.partial(ns["compute_embeddings"], text_encoders=[text_encoder_one, text_encoder_two],
                                                        tokenizers=[tokenizer_one, tokenizer_two])
        if float64:  # the exact step (run_in_float64)
            if mixed_precision != "no":
                raise ValueError("float64 runs: not with mixed precision")
            run_in_float64(ns, noise_scheduler.alphas_cumprod, num_ddim_timesteps, noise_scheduler.config.num_train_timesteps)
        self.accelerator = accelerator
        self.device = accelerator.device
        self.resolution = resolution

    def set_global_step(self, step: int) -> None:
        """The optimizer step the next :meth:`step` runs as (TSCD's stage; see :class:`ReferenceTrainer`)."""
        self.ns["global_step"] = int(step)

    def step(self, images: torch.Tensor, captions: list[str], original_sizes: list[tuple[int, int]] | None = None,
             crop_top_lefts: list[tuple[int, int]] | None = None) -> dict:
        """Execute the reference's training-step block once on a batch as its ``collate_fn`` builds it
        (``original_sizes`` (h, w), ``crop_top_lefts`` (y, x); default: uncropped images at the
        training resolution); return its local variables."""
        n = images.shape[0]
        self.ns["batch"] = {
            "pixel_values": images.float(),
            "captions": list(captions),
            "original_sizes": [tuple(s) for s in original_sizes] if original_sizes else [(self.resolution, self.resolution)] * n,
            "crop_top_lefts": [tuple(c) for c in crop_top_lefts] if crop_top_lefts else [(0, 0)] * n,
        }
        exec(self.code, self.ns)
        return self.ns


def make_reference_trainer(kind: str, teacher_dir, *, rank: int, batch_size: int, resolution: int, **kwargs):
    """:class:`ReferenceTrainer` (``kind="sd"``) or :class:`ReferenceTrainerSDXL` (``"sdxl"``; it has no
    teacher autocast, so ``teacher_autocast`` is dropped)."""
    if kind == "sdxl":
        kwargs.pop("teacher_autocast", None)
        return ReferenceTrainerSDXL(teacher_dir, rank=rank, resolution=resolution, **kwargs)
    return ReferenceTrainer(teacher_dir, rank=rank, batch_size=batch_size, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# PCM adversarial (``pcm_adv_sd`` / ``pcm_adv_sdxl``)

class RecordingTorch(types.ModuleType):
    """``torch`` as the executed block sees it, recording every ``torch.randn_like`` draw in order
    (``draws``): the adversarial steps draw their transport noises that way, and the parity tests hand the
    same numbers to our loss. Everything else is torch itself."""

    def __init__(self):
        super().__init__("torch")
        self.draws: list[torch.Tensor] = []

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, *args, **kwargs):
        out = torch.randn_like(*args, **kwargs)
        self.draws.append(out)
        return out


def discriminator_channels(unet, kind: str) -> list[int]:
    """``adapter_channel_dims`` of the reference's ``Discriminator`` for ``unet``: the channels of the features
    its ``modified_forward`` returns (down blocks, mid block and, in the SD 1.5 module, up blocks). The
    reference's defaults are SD 1.5's / SDXL's full-size channels; the constructor takes others."""
    channels = list(unet.config.block_out_channels)
    out = channels + [channels[-1]]
    return out + list(reversed(channels)) if kind == "pcm_adv_sd" else out


def load_pcm_adversarial(path: Path, kind: str, float64: bool = False) -> tuple[dict, type]:
    """(namespace with the discriminator module's ``modified_forward`` / ``DiscriminatorHead`` /
    ``Discriminator``, the modified ``DDPMScheduler`` class), both from the script's own folder.

    The discriminator module's top level cannot be imported with current diffusers: it imports
    ``diffusers.models.unet_2d_condition`` (moved to ``diffusers.models.unets`` and removed in later
    releases) for a ``__main__`` demo only. So, as for the scripts, its definitions are compiled from
    its AST, unchanged, with the names they use (torch, nn, F, typing). ``scheduling_ddpm_modified.py``
    imports as it is. ``float64``: the hinge losses' ``.float()`` casts become ``.double()`` (:class:`_Float64Casts`,
    recorded in the namespace's ``reference_repairs``)."""
    import importlib.util
    import typing

    folder = path.parent
    disc_path, sched_path = folder / PCM_ADV_MODULES[kind], folder / "scheduling_ddpm_modified.py"
    for p in (disc_path, sched_path):
        if not p.is_file():
            raise ReferenceUnavailable(f"{p} not found: {SCRIPT_NAMES[kind]} imports it from its own folder (extract it next to the script)")
    tree = ast.parse(disc_path.read_text(encoding="utf-8"))
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in PCM_ADV_DEFS]
    missing = set(PCM_ADV_DEFS) - {n.name for n in defs}
    if missing:
        raise ReferenceUnavailable(f"{disc_path}: definitions not found: {sorted(missing)}")
    repairs = []
    if float64:
        casts = _Float64Casts()
        defs = [ast.fix_missing_locations(casts.visit(n)) for n in defs]
        repairs.append(f"float64 run: {disc_path.name}: .float() -> .double() in {casts.replaced} place(s)")
    ns = {"torch": torch, "nn": torch.nn, "F": F, "Union": typing.Union, "Optional": typing.Optional, "Dict": typing.Dict,
          "Any": typing.Any, "Tuple": typing.Tuple, "__name__": "pcm_reference_discriminator", "reference_repairs": repairs}
    _compile_defs(defs, disc_path, ns)
    spec = importlib.util.spec_from_file_location(f"pcm_reference_scheduling_{kind}", sched_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return ns, module.DDPMScheduler


class ReferenceTrainerPcmSDXL(ReferenceTrainer):
    """``train_pcm_lora_sdxl_adv.py`` (PCM's only SDXL script) around a tiny SDXL-type folder, set up as its
    ``main()``: a separate frozen ``teacher_unet`` (also the discriminator's), ``get_peft_model`` on the student
    with the script's targets and default alpha (peft's 8), the modified ``DDPMScheduler``, AdamW for the
    student (betas 0.9/0.999, eps 1e-8) and for the heads (betas (0, 0.999), weight decay 1e-3),
    ``compute_embeddings_fn`` = ``functools.partial(compute_embeddings, proportion_empty_prompts=0.0, ...)``.

    One adaptation (documented): ``main()`` builds its unconditional embeddings as
    ``torch.zeros(train_batch_size, 77, 2048)`` and ``torch.zeros(train_batch_size, 1280)`` (SDXL's full
    sizes); here they are zeros of the tiny teacher's sizes (sequence length, hidden size, pooled size)."""

    def __init__(self, teacher_dir, *, rank: int, batch_size: int, resolution: int, lr: float = 1e-4, w_min: float = 3.0,
                 w_max: float = 15.0, loss_type: str = "huber", huber_c: float = 0.001, num_ddim_timesteps: int = 50,
                 phases: int = 4, solver_guidance: bool = True, adv_weight: float = 0.1, adv_lr: float = 1e-5,
                 lora_alpha: float | None = None, device: str | None = None, weight_decay: float = 0.0,
                 kind: str = "pcm_adv_sdxl", float64: bool = False):
        from accelerate import Accelerator
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig, get_peft_model
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        self.ns, self.code = load_reference(reference_path(kind), kind=kind, float64=float64)
        teacher = os.fspath(teacher_dir)
        cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
        accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no", cpu=cpu)
        _, scheduler_cls = load_pcm_adversarial(reference_path(kind), kind)
        noise_scheduler = scheduler_cls.from_pretrained(teacher, subfolder="scheduler")
        alpha_schedule = torch.sqrt(noise_scheduler.alphas_cumprod)
        sigma_schedule = torch.sqrt(1 - noise_scheduler.alphas_cumprod)
        solver = self.ns["DDIMSolver"](noise_scheduler.alphas_cumprod.numpy(), timesteps=noise_scheduler.config.num_train_timesteps,
                                       ddim_timesteps=num_ddim_timesteps)
        tokenizer_one = AutoTokenizer.from_pretrained(teacher, subfolder="tokenizer", use_fast=False)
        tokenizer_two = AutoTokenizer.from_pretrained(teacher, subfolder="tokenizer_2", use_fast=False)
        # the script picks these classes from the configs' ``architectures`` (import_model_class_from_model_name_or_path)
        text_encoder_one = CLIPTextModel.from_pretrained(teacher, subfolder="text_encoder")
        text_encoder_two = CLIPTextModelWithProjection.from_pretrained(teacher, subfolder="text_encoder_2")
        vae = AutoencoderKL.from_pretrained(teacher, subfolder="vae")
        teacher_unet = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet")
        vae.requires_grad_(False)
        text_encoder_one.requires_grad_(False)
        text_encoder_two.requires_grad_(False)
        teacher_unet.requires_grad_(False)
        unet = UNet2DConditionModel.from_pretrained(teacher, subfolder="unet")
        unet.train()
        targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                   "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]  # the script's list
        lora_kwargs = {} if lora_alpha is None else {"lora_alpha": lora_alpha}
        unet = get_peft_model(unet, LoraConfig(r=rank, target_modules=targets, lora_dropout=0.0, **lora_kwargs))
        weight_dtype = torch.float32
        vae.to(accelerator.device)
        text_encoder_one.to(accelerator.device, dtype=weight_dtype)
        text_encoder_two.to(accelerator.device, dtype=weight_dtype)
        teacher_unet.to(accelerator.device)
        alpha_schedule = alpha_schedule.to(accelerator.device)
        sigma_schedule = sigma_schedule.to(accelerator.device)
        solver = solver.to(accelerator.device)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, eps=1e-8)
        lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=10**9)
        args = types.SimpleNamespace(resolution=resolution, num_ddim_timesteps=num_ddim_timesteps, w_min=w_min, w_max=w_max,
                                     loss_type=loss_type, huber_c=huber_c, max_grad_norm=1.0, multiphase=phases,
                                     not_apply_cfg_solver=not solver_guidance, adv_weight=adv_weight, adv_lr=adv_lr,
                                     adam_weight_decay=weight_decay, adam_epsilon=1e-8, pretrained_vae_model_name_or_path=None)
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
        ns = self.ns
        ns.update(args=args, accelerator=accelerator)  # compute_embeddings reads them
        ns["compute_embeddings_fn"] = functools.partial(ns["compute_embeddings"], proportion_empty_prompts=0.0,
                                                        text_encoders=[text_encoder_one, text_encoder_two],
                                                        tokenizers=[tokenizer_one, tokenizer_two])
        with torch.no_grad():  # the shapes of the tiny teacher's embeddings (class docstring)
            probe = ns["compute_embeddings_fn"]([""], [torch.tensor([resolution]), torch.tensor([resolution])],
                                                [torch.tensor([0]), torch.tensor([0])])
        seq, hidden = probe["prompt_embeds"].shape[1:]
        pooled = probe["text_embeds"].shape[1]
        ns.update(accelerator=accelerator, unet=unet, teacher_unet=teacher_unet, vae=vae, weight_dtype=weight_dtype, args=args,
                  noise_scheduler=noise_scheduler, solver=solver, alpha_schedule=alpha_schedule, sigma_schedule=sigma_schedule,
                  optimizer=optimizer, lr_scheduler=lr_scheduler, global_step=0,
                  uncond_prompt_embeds=torch.zeros(batch_size, seq, hidden).to(accelerator.device),
                  uncond_pooled_prompt_embeds=torch.zeros(batch_size, pooled).to(accelerator.device))
        if float64:  # the exact step (run_in_float64); the discriminator's heads follow in _setup_adversarial
            run_in_float64(ns, noise_scheduler.alphas_cumprod, num_ddim_timesteps, noise_scheduler.config.num_train_timesteps)
        self._setup_adversarial(kind, teacher, teacher_unet, accelerator, args, float64)
        self.image_dtype = torch.float64 if float64 else torch.float32  # the block hands the images to the VAE as they come
        self.accelerator = accelerator
        self.device = accelerator.device
        self.resolution = resolution

    def step(self, images: torch.Tensor, captions: list[str]) -> dict:
        """Execute the script's training-step block once on a batch as its data loader collates it
        (``image, text, orig_size, crop_coords``: sizes and crops as two per-coordinate tensors; uncropped
        images at the training resolution); return its local variables."""
        n = images.shape[0]
        size = torch.full((n,), self.resolution, dtype=torch.long)
        zero = torch.zeros(n, dtype=torch.long)
        self.ns["batch"] = (images.to(self.image_dtype), list(captions), [size, size], [zero, zero])
        self.recording_torch.draws.clear()
        exec(self.code, self.ns)
        return self.ns
