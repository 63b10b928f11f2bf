"""LCM-LoRA Loader node: LoraLoader for LCM-LoRA (any format lcm_core reads) + LCM model sampling.

LCM-LoRA (Luo et al. 2023, arXiv 2311.05556) is an ordinary LoRA whose base model must
then be sampled as a consistency model (boundary condition c_skip/c_out, paper Eq. 4) on
the 50-step distillation grid; ``patch_sampling`` does that, as ComfyUI's
``ModelSamplingDiscrete(sampling="lcm")`` would. A TCD adapter (its metadata says so, or
``sampling`` = ``tcd``) keeps plain ε model sampling instead, and the MODEL carries the
adapter's sampling recipe for LCM KSampler / LCM Sampler ``mode: auto`` (``recipe_follow``).
PCM (Wang et al. 2024, arXiv 2405.18407) and TSCD (Hyper-SD, Ren et al. 2024, arXiv 2404.13686)
adapters keep plain ε model sampling too; their recipe carries the phase count (metadata
``lcm_lora.phases``, or the ``phases`` input when ``sampling`` chooses pcm / tscd for an adapter
without that metadata, e.g. a released PCM / Hyper-SD LoRA).
"""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..lcm_core.errors import ConfigError
from . import comfy_bridge as bridge
from . import recipe_follow

AdapterType = io.Custom(bridge.ADAPTER_TYPE)


class LCMLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LCMLoraLoader",
            display_name="LCM-LoRA Loader",
            category=bridge.CATEGORY,
            description="Apply an LCM-LoRA (kohya, diffusers, peft or ComfyUI format) to MODEL and CLIP "
                        "and switch the model to LCM sampling, for 2-8 step generation at cfg 1-2 (an adapter distilled "
                        "without guidance, 'normal CFG': at the cfg its metadata recommends, shown after it runs).",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD 1.x, SD 2.x, SDXL or SSD-1B) to apply the LCM-LoRA to."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Optional CLIP model; patched only if the adapter has text-encoder modules and strength_clip is not 0."),
                io.Combo.Input("lora_name", options=bridge.lora_names(),
                               tooltip="The adapter file in ComfyUI's loras folder (kohya, diffusers, peft or ComfyUI format)."),
                io.Float.Input("strength_model", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="How strongly to apply the adapter to the diffusion model (1.0 = as distilled)."),
                io.Float.Input("strength_clip", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="How strongly to apply the adapter's text-encoder modules to CLIP."),
                io.Boolean.Input("patch_sampling", default=True, display_name="patch model sampling",
                                 tooltip="Set the model sampling the adapter needs: LCM adapters get LCM sampling (consistency "
                                         "boundary condition on the 50-step grid, like ModelSamplingDiscrete 'lcm'); TCD, PCM "
                                         "and TSCD adapters keep plain eps sampling. Off: the model's sampling is left as it is."),
                io.Combo.Input("sampling", options=list(recipe_follow.SAMPLING_CHOICES), default="auto", optional=True,
                               tooltip="auto: follow the adapter's metadata (adapters trained by this pack record LCM, TCD, "
                                       "PCM or TSCD); adapters without it are treated as LCM. lcm / tcd / pcm / tscd: choose, "
                                       "e.g. tcd for TCD-SDXL-LoRA, pcm for a PCM LoRA, tscd for a Hyper-SD LoRA. LCM KSampler / "
                                       "LCM Sampler in mode auto follow this choice."),
                io.Int.Input("phases", default=recipe_follow.DEFAULT_PHASES, min=1, max=50, optional=True,
                             tooltip="sampling pcm / tscd chosen for an adapter without metadata: its number of phases "
                                     "(segments), e.g. 4 for a 4-step PCM / Hyper-SD LoRA (check its model card: often "
                                     "the step count it was released for). Adapters whose metadata records a pcm / tscd "
                                     "recipe keep their own; ignored by auto, lcm and tcd."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The patched diffusion model."),
                io.Clip.Output(display_name="CLIP", tooltip="The patched CLIP model. Needs the clip input: connect the "
                                                            "checkpoint loader's CLIP to this node's clip input to use it."),
                AdapterType.Output(display_name="adapter", tooltip="The loaded adapter, e.g. for LCM Adapter Save."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, lora_name):
        return bridge.check_lora_name(lora_name)

    @classmethod
    def execute(cls, model, lora_name, strength_model=1.0, strength_clip=1.0, patch_sampling=True, clip=None,
                sampling="auto", phases=recipe_follow.DEFAULT_PHASES) -> io.NodeOutput:
        # ComfyUI's executor fills cls.hidden; a direct call (a script, another node pack) leaves it None
        prompt, unique_id = getattr(cls.hidden, "prompt", None), getattr(cls.hidden, "unique_id", None)
        if clip is None and clip_output_used(prompt, unique_id):
            raise ConfigError(
                f"LCM-LoRA Loader (#{unique_id}) CLIP output",
                "is connected but the clip input is not: connect your checkpoint loader's CLIP output to this "
                "node's clip input (or take CLIP for the text encoders straight from the checkpoint loader)")
        if sampling not in recipe_follow.SAMPLING_CHOICES:
            raise ConfigError("LCM-LoRA Loader sampling",
                              f"must be one of {', '.join(recipe_follow.SAMPLING_CHOICES)}, got {sampling!r}")
        arch = bridge.model_architecture(model)
        adapter = bridge.load_adapter(lora_name)
        bridge.check_adapter_architecture(lora_name, adapter, arch)
        patch_clip = clip if (clip is not None and strength_clip != 0) else None
        patch_model = model if strength_model != 0 else None
        new_model, new_clip = model, clip
        if patch_model is not None or patch_clip is not None:
            patches = bridge.adapter_patches(lora_name, adapter, arch, model=patch_model, clip=patch_clip)
            new_model, new_clip = bridge.apply_patches(patches, model, clip, strength_model, strength_clip)
        recipe, source = recipe_follow.resolve(adapter.metadata, sampling, phases)
        if patch_sampling and recipe.model_sampling == "lcm":
            new_model = bridge.patch_lcm_sampling(new_model)
        new_model = recipe_follow.attach(new_model, recipe)
        text = f"{lora_name}: {bridge.describe(adapter)}\n{recipe_follow.describe(recipe, source)}"
        text_encoder = sum(not key.startswith("unet.") for key in adapter.modules)
        if text_encoder and clip is None and strength_clip != 0:  # LoraLoaderModelOnly logs each such key
            note = (f"{text_encoder} text-encoder module(s) not applied: the clip input is not connected "
                    "(connect it, or set strength_clip 0 to silence this)")
            logging.warning("[LCM-LoRA] %s: %s", lora_name, note)
            text += f"\nnote: {note}"
        return io.NodeOutput(new_model, new_clip, adapter, ui={"text": [text]})


def clip_output_used(prompt, unique_id) -> bool:
    """Whether any node of the prompt takes this node's CLIP output (output 1)."""
    if not isinstance(prompt, dict) or unique_id is None:
        return False
    me = str(unique_id)
    for node in prompt.values():
        for value in (node.get("inputs") or {}).values() if isinstance(node, dict) else ():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == me and value[1] == 1:
                return True
    return False
