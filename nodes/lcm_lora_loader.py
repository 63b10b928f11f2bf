"""LCM-LoRA Loader node: LoraLoader for LCM-LoRA (any format lcm_core reads) + LCM model sampling.

LCM-LoRA (Luo et al. 2023, arXiv 2311.05556) is an ordinary LoRA whose base model must
then be sampled as a consistency model (boundary condition c_skip/c_out, paper Eq. 4) on
the 50-step distillation grid; ``patch_sampling`` does that, as ComfyUI's
``ModelSamplingDiscrete(sampling="lcm")`` would.
"""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge as bridge

AdapterType = io.Custom(bridge.ADAPTER_TYPE)


class LCMLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LCMLoraLoader",
            display_name="LCM-LoRA Loader",
            category=bridge.CATEGORY,
            description="Apply an LCM-LoRA (kohya, diffusers, peft or ComfyUI format) to MODEL and CLIP "
                        "and switch the model to LCM sampling, for 2-8 step generation at cfg 1-2.",
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
                io.Boolean.Input("patch_sampling", default=True, display_name="patch sampling to LCM",
                                 tooltip="Switch the model to LCM sampling (consistency boundary condition on the "
                                         "50-step grid), like ModelSamplingDiscrete with sampling 'lcm'. Keep on for LCM-LoRAs."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The patched diffusion model."),
                io.Clip.Output(display_name="CLIP", tooltip="The patched CLIP model (unchanged if none was connected)."),
                AdapterType.Output(display_name="adapter", tooltip="The loaded adapter, e.g. for LCM Adapter Save."),
            ],
        )

    @classmethod
    def validate_inputs(cls, lora_name):
        return bridge.check_lora_name(lora_name)

    @classmethod
    def execute(cls, model, lora_name, strength_model=1.0, strength_clip=1.0, patch_sampling=True, clip=None) -> io.NodeOutput:
        arch = bridge.model_architecture(model)
        adapter = bridge.load_adapter(lora_name)
        bridge.check_adapter_architecture(lora_name, adapter, arch)
        patch_clip = clip if (clip is not None and strength_clip != 0) else None
        patch_model = model if strength_model != 0 else None
        new_model, new_clip = model, clip
        if patch_model is not None or patch_clip is not None:
            patches = bridge.adapter_patches(lora_name, adapter, arch, model=patch_model, clip=patch_clip)
            new_model, new_clip = bridge.apply_patches(patches, model, clip, strength_model, strength_clip)
        if patch_sampling:
            new_model = bridge.patch_lcm_sampling(new_model)
        return io.NodeOutput(new_model, new_clip, adapter, ui={"text": [f"{lora_name}: {bridge.describe(adapter)}"]})
