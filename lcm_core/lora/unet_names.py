"""diffusers ↔ original-SD (LDM / SGM) UNet module names.

The original Stable Diffusion UNet (``ldm.modules.diffusionmodules.openaimodel.UNetModel``,
also used by SGM/SDXL, ComfyUI and sd-scripts' ``sdxl_original_unet.py``) numbers its
blocks flatly: ``input_blocks.N.M``, ``middle_block.M``, ``output_blocks.N.M``. The
index arithmetic follows diffusers ``convert_ldm_unet_checkpoint``
(``loaders/single_file_utils.py``) and ComfyUI ``comfy.utils.unet_to_diffusers``:

* ``conv_in`` = ``input_blocks.0.0``; level ``i`` with ``L_i`` resnets occupies
  ``input_blocks[s_i … s_i+L_i]`` with ``s_i = 1 + Σ_{k<i}(L_k+1)``: ``.0`` resnet, ``.1``
  attention, and the last index ``.0.op`` the downsampler;
* ``mid_block.resnets.0 / attentions.0 / resnets.1`` = ``middle_block.0 / 1 / 2``;
* up level ``i`` (``L_i+1`` resnets) occupies ``output_blocks[u_i … u_i+L_i]``: ``.0``
  resnet, ``.1`` attention, upsampler ``.1.conv`` (no attention) or ``.2.conv``;
* resnet internals: ``norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut`` =
  ``in_layers.0/in_layers.2/emb_layers.1/out_layers.0/out_layers.3/skip_connection``;
* ``time_embedding.linear_1/2`` = ``time_embed.0/2``, ``add_embedding.linear_1/2`` =
  ``label_emb.0.0/0.2``, ``conv_norm_out`` = ``out.0``, ``conv_out`` = ``out.2``.

Names here are module paths inside the UNet, without ``model.diffusion_model.`` and
without ``.weight``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import model_configs

_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_RESNET_FROM_LDM = {v: k for k, v in _RESNET_TO_LDM.items()}
_TOP_TO_LDM = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_TOP_FROM_LDM = {v: k for k, v in _TOP_TO_LDM.items()}
LDM_ROOTS = ("input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out")


@dataclass(frozen=True)
class UnetLayout:
    """What the index arithmetic needs: resnets per down level, attention flags, mid block kind."""

    layers_per_block: tuple[int, ...]
    down_attention: tuple[bool, ...]
    up_attention: tuple[bool, ...]
    mid: str | None  # "cross" (resnet-attention-resnet), "resnet" (one resnet), None

    @classmethod
    def from_config(cls, config: dict) -> "UnetLayout":
        down = tuple(config["down_block_types"])
        up = tuple(config["up_block_types"])
        lpb = config.get("layers_per_block", 2)
        lpb = tuple(lpb) if isinstance(lpb, (list, tuple)) else (lpb,) * len(down)
        mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        mid = {"UNetMidBlock2DCrossAttn": "cross", "UNetMidBlock2D": "resnet", None: None}[mid_type]
        return cls(lpb, tuple("CrossAttn" in t for t in down), tuple("CrossAttn" in t for t in up), mid)

    @classmethod
    def for_arch(cls, arch: str) -> "UnetLayout":
        return cls.from_config(model_configs.unet_config(arch))

    @property
    def levels(self) -> int:
        return len(self.layers_per_block)

    def _down_start(self, i: int) -> int:
        return 1 + sum(n + 1 for n in self.layers_per_block[:i])

    def _up_layers(self) -> tuple[int, ...]:
        return tuple(reversed(self.layers_per_block))

    def _up_start(self, i: int) -> int:
        return sum(n + 1 for n in self._up_layers()[:i])


DEFAULT_LAYOUT = UnetLayout.for_arch("sdxl")  # layers_per_block=2 everywhere, as in every supported arch


def _resnet_to_ldm(rest: str) -> str | None:
    head, _, tail = rest.partition(".")
    if head in _RESNET_TO_LDM:
        return _RESNET_TO_LDM[head] + (f".{tail}" if tail else "")
    return None


def _resnet_from_ldm(rest: str) -> str | None:
    parts = rest.split(".")
    key = ".".join(parts[:2])
    if key in _RESNET_FROM_LDM:
        return ".".join([_RESNET_FROM_LDM[key], *parts[2:]])
    if parts[0] == "skip_connection":
        return ".".join(["conv_shortcut", *parts[1:]])
    return None


def diffusers_to_ldm(path: str, layout: UnetLayout = DEFAULT_LAYOUT) -> str | None:
    """``down_blocks.1.attentions.0.proj_in`` → ``input_blocks.4.1.proj_in``; None if not mappable."""
    if path in _TOP_TO_LDM:
        return _TOP_TO_LDM[path]
    p = path.split(".")
    try:
        if p[0] == "down_blocks":
            i, kind = int(p[1]), p[2]
            if i >= layout.levels:
                return None
            start = layout._down_start(i)
            if kind == "downsamplers" and p[3] == "0" and p[4:] == ["conv"]:
                if i == layout.levels - 1:
                    return None
                return f"input_blocks.{start + layout.layers_per_block[i]}.0.op"
            j = int(p[3])
            if j >= layout.layers_per_block[i]:
                return None
            rest = ".".join(p[4:])
            if kind == "resnets":
                r = _resnet_to_ldm(rest)
                return None if r is None else f"input_blocks.{start + j}.0.{r}"
            if kind == "attentions" and layout.down_attention[i] and rest:
                return f"input_blocks.{start + j}.1.{rest}"
            return None
        if p[0] == "mid_block":
            kind, j, rest = p[1], int(p[2]), ".".join(p[3:])
            if kind == "resnets":
                if layout.mid is None or (layout.mid == "resnet" and j > 0) or j > 1:
                    return None
                r = _resnet_to_ldm(rest)
                return None if r is None else f"middle_block.{2 * j}.{r}"
            if kind == "attentions" and layout.mid == "cross" and j == 0 and rest:
                return f"middle_block.1.{rest}"
            return None
        if p[0] == "up_blocks":
            i, kind = int(p[1]), p[2]
            if i >= layout.levels:
                return None
            n = layout._up_layers()[i] + 1
            start = layout._up_start(i)
            if kind == "upsamplers" and p[3] == "0" and p[4:] == ["conv"]:
                if i == layout.levels - 1:
                    return None
                return f"output_blocks.{start + n - 1}.{2 if layout.up_attention[i] else 1}.conv"
            j = int(p[3])
            if j >= n:
                return None
            rest = ".".join(p[4:])
            if kind == "resnets":
                r = _resnet_to_ldm(rest)
                return None if r is None else f"output_blocks.{start + j}.0.{r}"
            if kind == "attentions" and layout.up_attention[i] and rest:
                return f"output_blocks.{start + j}.1.{rest}"
            return None
    except (IndexError, ValueError):
        return None
    return None


_ATTENTION_HEADS = ("norm", "proj_in", "proj_out", "transformer_blocks")


def ldm_to_diffusers(path: str, layout: UnetLayout = DEFAULT_LAYOUT) -> str | None:
    """``input_blocks.4.1.proj_in`` → ``down_blocks.1.attentions.0.proj_in``; None if not mappable."""
    if path in _TOP_FROM_LDM:
        return _TOP_FROM_LDM[path]
    p = path.split(".")
    try:
        if p[0] == "input_blocks":
            n, m, rest = int(p[1]), int(p[2]), p[3:]
            for i in range(layout.levels):
                start = layout._down_start(i)
                lpb = layout.layers_per_block[i]
                if start <= n <= start + lpb:
                    j = n - start
                    if j == lpb:  # downsampler slot
                        if i < layout.levels - 1 and m == 0 and rest == ["op"]:
                            return f"down_blocks.{i}.downsamplers.0.conv"
                        return None
                    if m == 0:
                        r = _resnet_from_ldm(".".join(rest))
                        return None if r is None else f"down_blocks.{i}.resnets.{j}.{r}"
                    if m == 1 and layout.down_attention[i] and rest and rest[0] in _ATTENTION_HEADS:
                        return f"down_blocks.{i}.attentions.{j}.{'.'.join(rest)}"
                    return None
            return None
        if p[0] == "middle_block":
            m, rest = int(p[1]), ".".join(p[2:])
            if m in (0, 2) and layout.mid is not None and not (m == 2 and layout.mid == "resnet"):
                r = _resnet_from_ldm(rest)
                return None if r is None else f"mid_block.resnets.{m // 2}.{r}"
            if m == 1 and layout.mid == "cross" and p[2] in _ATTENTION_HEADS:
                return f"mid_block.attentions.0.{rest}"
            return None
        if p[0] == "output_blocks":
            n, m, rest = int(p[1]), int(p[2]), p[3:]
            up_layers = layout._up_layers()
            for i in range(layout.levels):
                start = layout._up_start(i)
                count = up_layers[i] + 1
                if start <= n < start + count:
                    j = n - start
                    if m == 0:
                        r = _resnet_from_ldm(".".join(rest))
                        return None if r is None else f"up_blocks.{i}.resnets.{j}.{r}"
                    if rest == ["conv"] and j == count - 1 and i < layout.levels - 1:
                        if m == (2 if layout.up_attention[i] else 1):
                            return f"up_blocks.{i}.upsamplers.0.conv"
                        return None
                    if m == 1 and layout.up_attention[i] and rest and rest[0] in _ATTENTION_HEADS:
                        return f"up_blocks.{i}.attentions.{j}.{'.'.join(rest)}"
                    return None
            return None
    except (IndexError, ValueError):
        return None
    return None
