"""In-memory LoRA adapter: one :class:`LoraModule` per target module.

Low-rank update of a weight W (Hu et al. 2021, Eq. 3; kohya's alpha convention):

    ΔW = scale · up @ down,          scale = alpha / rank  (alpha None ⇒ scale 1)

Linear: ``down`` (r, in), ``up`` (out, r).
Conv:   ``down`` (r, in, kh, kw), ``up`` (out, r, 1, 1)   (LoCon, incl. 3×3).
Tucker (LyCORIS ``lora_mid``): ``down`` (r, in, 1, 1), ``mid`` (r, r, kh, kw), ``up`` (out, r, 1, 1).

Module keys are canonical and format independent: ``<component>.<module path>``
where component is ``unet``, ``text_encoder`` or ``text_encoder_2`` and the module
path is the diffusers / transformers ``named_modules()`` name, e.g.
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` or
``text_encoder.text_model.encoder.layers.0.self_attn.q_proj``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass
class LoraModule:
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None
    mid: torch.Tensor | None = None
    dora_scale: torch.Tensor | None = None  # DoRA magnitude (kohya ``dora_scale``); see lycoris_modules

    @property
    def multiplicative(self) -> bool:
        """DoRA rescales W + ΔW by its norm: the result depends on the base weight."""
        return self.dora_scale is not None

    @property
    def low_rank(self) -> bool:
        return True

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"down": self.down, "up": self.up}
        if self.mid is not None:
            out["mid"] = self.mid
        if self.dora_scale is not None:
            out["dora_scale"] = self.dora_scale
        return out

    def unscaled_delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.delta_weight(dtype) / self.scale if self.scale != 0 else self.delta_weight(dtype)

    def apply_to(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """θ' for a float32 working weight (ComfyUI ``LoRAAdapter.calculate_weight``; DoRA included)."""
        if self.dora_scale is None:
            return weight + self.delta_weight(weight.dtype).reshape(weight.shape) * strength
        from .lycoris_modules import dora_apply

        up = self.up.to(weight.dtype).reshape(self.up.shape[0], -1)
        down = self.down.to(weight.dtype)
        if self.mid is not None:
            down = torch.einsum("abhw,bi->aihw", self.mid.to(weight.dtype), down.reshape(self.rank, -1))
        diff = (up @ down.reshape(down.shape[0], -1)).reshape(weight.shape)
        return dora_apply(weight, self.dora_scale, diff, self.scale, strength)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    @property
    def is_conv(self) -> bool:
        return self.down.dim() == 4

    @property
    def in_features(self) -> int:
        return int(self.down.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the base weight this module updates."""
        if not self.is_conv:
            return (self.out_features, self.in_features)
        kernel = self.mid.shape[2:] if self.mid is not None else self.down.shape[2:]
        return (self.out_features, self.in_features, *kernel)

    def num_parameters(self) -> int:
        n = self.down.numel() + self.up.numel()
        n += self.mid.numel() if self.mid is not None else 0
        return n + (self.dora_scale.numel() if self.dora_scale is not None else 0)  # as LyCORIS modules count theirs

    def delta_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense ΔW = scale · up ∘ [mid] ∘ down, shaped like the base weight."""
        up = self.up.to(dtype).reshape(self.up.shape[0], self.up.shape[1])
        if self.mid is None:
            down = self.down.to(dtype).reshape(self.rank, -1)
            delta = up @ down
        else:
            down = self.down.to(dtype).reshape(self.rank, -1)
            delta = torch.einsum("oa,abhw,bi->oihw", up, self.mid.to(dtype), down)
        return (delta * self.scale).reshape(self.weight_shape)

    def to(self, dtype: torch.dtype) -> "LoraModule":
        return LoraModule(
            down=self.down.to(dtype),
            up=self.up.to(dtype),
            alpha=self.alpha,
            mid=None if self.mid is None else self.mid.to(dtype),
            dora_scale=None if self.dora_scale is None else self.dora_scale.to(dtype),
        )


@dataclass
class LoraAdapter:
    """A set of LoRA modules plus file metadata.

    ``source_format``: ``kohya`` | ``diffusers`` | ``peft`` | ``comfy`` (how it was read).
    ``architecture``: ``sd1`` | ``sd2`` | ``sdxl`` | ``ssd1b`` | ``None`` (unknown).
    ``metadata``: the safetensors ``__metadata__`` (str → str), kept through conversions.
    """

    modules: dict[str, LoraModule] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    source_format: str | None = None
    architecture: str | None = None

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    def components(self) -> set[str]:
        return {key.split(".", 1)[0] for key in self.modules}

    def ranks(self) -> set[int]:
        return {m.rank for m in self.modules.values()}

    def num_parameters(self) -> int:
        return sum(m.num_parameters() for m in self.modules.values())

    def dtypes(self) -> set[torch.dtype]:
        return {t.dtype for m in self.modules.values() for k, t in m.tensors().items() if k != "dora_scale"}

    def algorithms(self) -> dict[str, int]:
        """Module count per algorithm (``lora``, ``locon``, ``loha``, ``lokr``, ``full``, ``oft``, …, ``+dora``)."""
        from .lycoris_modules import algo_of

        out: dict[str, int] = {}
        for m in self.modules.values():
            a = algo_of(m)
            out[a] = out.get(a, 0) + 1
        return out

    def is_plain_lora(self) -> bool:
        """Only LoRA/LoCon modules without DoRA (what every format and the concat merge can hold)."""
        return all(isinstance(m, LoraModule) and m.dora_scale is None for m in self.modules.values())
