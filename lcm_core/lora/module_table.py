"""Every LoRA-targetable module (Linear / Conv2d) of a UNet or CLIP text encoder, with its weight shape.

Pure Python, computed from the config dicts of :mod:`lcm_core.model_configs` (or any
``UNet2DConditionModel`` / ``CLIPTextConfig`` kwargs of the same family), so that key
mapping, validation and architecture detection need neither diffusers nor memory.
It reproduces the module tree of diffusers ``UNet2DConditionModel`` (blocks
``CrossAttnDownBlock2D``/``DownBlock2D``, ``CrossAttnUpBlock2D``/``UpBlock2D``, mid
``UNetMidBlock2DCrossAttn``/``UNetMidBlock2D``/none; see ``unet_2d_condition.py``,
``unet_2d_blocks.py``) and of transformers ``CLIPTextModel(WithProjection)``;
``tests/test_key_mapping.py`` checks it against the real models built on the meta device.

Weight shapes: Linear ``(out, in)``, Conv2d ``(out, in, kh, kw)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .. import model_configs


@dataclass(frozen=True)
class ModuleSpec:
    kind: str  # "linear" | "conv"
    shape: tuple[int, ...]


def _as_list(value, n):
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * n


def _resnet(table, prefix, cin, cout, temb):
    table[f"{prefix}.conv1"] = ModuleSpec("conv", (cout, cin, 3, 3))
    table[f"{prefix}.time_emb_proj"] = ModuleSpec("linear", (cout, temb))
    table[f"{prefix}.conv2"] = ModuleSpec("conv", (cout, cout, 3, 3))
    if cin != cout:
        table[f"{prefix}.conv_shortcut"] = ModuleSpec("conv", (cout, cin, 1, 1))


def _transformer(table, prefix, ch, depth, cross_dim, linear_proj):
    proj = ModuleSpec("linear", (ch, ch)) if linear_proj else ModuleSpec("conv", (ch, ch, 1, 1))
    table[f"{prefix}.proj_in"] = proj
    for k in range(depth):
        b = f"{prefix}.transformer_blocks.{k}"
        for attn, kv_dim in (("attn1", ch), ("attn2", cross_dim)):
            table[f"{b}.{attn}.to_q"] = ModuleSpec("linear", (ch, ch))
            table[f"{b}.{attn}.to_k"] = ModuleSpec("linear", (ch, kv_dim))
            table[f"{b}.{attn}.to_v"] = ModuleSpec("linear", (ch, kv_dim))
            table[f"{b}.{attn}.to_out.0"] = ModuleSpec("linear", (ch, ch))
        table[f"{b}.ff.net.0.proj"] = ModuleSpec("linear", (ch * 8, ch))  # GEGLU: 2 × 4·dim
        table[f"{b}.ff.net.2"] = ModuleSpec("linear", (ch, ch * 4))
    table[f"{prefix}.proj_out"] = proj


def unet_modules(config: dict) -> dict[str, ModuleSpec]:
    """Module path → spec for a diffusers ``UNet2DConditionModel(**config)``."""
    boc = list(config.get("block_out_channels", (320, 640, 1280, 1280)))
    n = len(boc)
    down_types = list(config.get("down_block_types"))
    up_types = list(config.get("up_block_types"))
    lpb = _as_list(config.get("layers_per_block", 2), n)
    tlpb = _as_list(config.get("transformer_layers_per_block", 1), n)
    rtlpb = config.get("reverse_transformer_layers_per_block")
    cross = config.get("cross_attention_dim", 1280)
    if isinstance(cross, (list, tuple)):
        raise ValueError("per-block cross_attention_dim is not supported")
    linear_proj = bool(config.get("use_linear_projection", False))
    in_ch = config.get("in_channels", 4)
    out_ch = config.get("out_channels", 4)
    temb = boc[0] * 4
    table: dict[str, ModuleSpec] = {}
    table["conv_in"] = ModuleSpec("conv", (boc[0], in_ch, 3, 3))
    table["time_embedding.linear_1"] = ModuleSpec("linear", (temb, boc[0]))
    table["time_embedding.linear_2"] = ModuleSpec("linear", (temb, temb))
    if config.get("addition_embed_type") == "text_time":
        pdim = config["projection_class_embeddings_input_dim"]
        table["add_embedding.linear_1"] = ModuleSpec("linear", (temb, pdim))
        table["add_embedding.linear_2"] = ModuleSpec("linear", (temb, temb))
    elif config.get("addition_embed_type") or config.get("class_embed_type") or config.get("encoder_hid_dim"):
        raise ValueError("unsupported UNet config (class/addition embedding other than text_time)")

    out = boc[0]
    for i, btype in enumerate(down_types):
        cin, out = out, boc[i]
        for j in range(lpb[i]):
            _resnet(table, f"down_blocks.{i}.resnets.{j}", cin if j == 0 else out, out, temb)
            if btype == "CrossAttnDownBlock2D":
                _transformer(table, f"down_blocks.{i}.attentions.{j}", out, tlpb[i], cross, linear_proj)
            elif btype != "DownBlock2D":
                raise ValueError(f"unsupported down block type {btype}")
        if i < n - 1:
            table[f"down_blocks.{i}.downsamplers.0.conv"] = ModuleSpec("conv", (out, out, 3, 3))

    mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    c = boc[-1]
    if mid_type == "UNetMidBlock2DCrossAttn":
        _resnet(table, "mid_block.resnets.0", c, c, temb)
        _transformer(table, "mid_block.attentions.0", c, tlpb[-1], cross, linear_proj)
        _resnet(table, "mid_block.resnets.1", c, c, temb)
    elif mid_type == "UNetMidBlock2D":  # diffusers builds it with num_layers=0: one resnet
        _resnet(table, "mid_block.resnets.0", c, c, temb)
    elif mid_type is not None:
        raise ValueError(f"unsupported mid block type {mid_type}")

    rboc = list(reversed(boc))
    rlpb = list(reversed(lpb))
    rtl = list(reversed(tlpb))
    output = rboc[0]
    for i, btype in enumerate(up_types):
        prev, output = output, rboc[i]
        inp = rboc[min(i + 1, n - 1)]
        layers = rlpb[i] + 1
        for j in range(layers):
            skip = inp if j == layers - 1 else output
            rin = prev if j == 0 else output
            _resnet(table, f"up_blocks.{i}.resnets.{j}", rin + skip, output, temb)
            if btype == "CrossAttnUpBlock2D":
                depth = rtlpb[i][j] if rtlpb is not None else rtl[i]
                _transformer(table, f"up_blocks.{i}.attentions.{j}", output, depth, cross, linear_proj)
            elif btype != "UpBlock2D":
                raise ValueError(f"unsupported up block type {btype}")
        if i < n - 1:
            table[f"up_blocks.{i}.upsamplers.0.conv"] = ModuleSpec("conv", (output, output, 3, 3))
    table["conv_out"] = ModuleSpec("conv", (out_ch, boc[0], 3, 3))
    return table


def text_encoder_modules(config: dict, with_projection: bool) -> dict[str, ModuleSpec]:
    """Module path → spec for transformers ``CLIPTextModel`` (or ``…WithProjection``)."""
    h = config["hidden_size"]
    inter = config["intermediate_size"]
    table: dict[str, ModuleSpec] = {}
    for i in range(config["num_hidden_layers"]):
        p = f"text_model.encoder.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            table[f"{p}.self_attn.{name}"] = ModuleSpec("linear", (h, h))
        table[f"{p}.mlp.fc1"] = ModuleSpec("linear", (inter, h))
        table[f"{p}.mlp.fc2"] = ModuleSpec("linear", (h, inter))
    if with_projection:
        table["text_projection"] = ModuleSpec("linear", (config.get("projection_dim", 512), h))
    return table


@lru_cache(maxsize=None)
def _arch_table(arch: str) -> dict[str, ModuleSpec]:
    table = {f"unet.{k}": v for k, v in unet_modules(model_configs.unet_config(arch)).items()}
    for comp, cfg in model_configs.text_encoder_configs(arch).items():
        mods = text_encoder_modules(cfg, with_projection=comp == "text_encoder_2")
        table.update({f"{comp}.{k}": v for k, v in mods.items()})
    return table


def architecture_modules(arch: str) -> dict[str, ModuleSpec]:
    """Canonical key → spec of every Linear/Conv2d in the full-size ``arch`` UNet and text encoders."""
    return dict(_arch_table(arch))


def architecture_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    return {k: v.shape for k, v in _arch_table(arch).items()}


def module_kind(key: str) -> str:
    """Key with every numeric index replaced by ``#`` (``…layers.#.mlp.fc1``)."""
    import re

    return re.sub(r"\.\d+(?=\.|$)", ".#", key)


@lru_cache(maxsize=None)
def known_kinds() -> frozenset[str]:
    """Module kinds of every supported architecture (any block count / depth)."""
    return frozenset(module_kind(k) for a in model_configs.ARCHITECTURES for k in _arch_table(a))
