"""EMA target network θ⁻ for LCD (LCM paper Algorithm 1: θ⁻ ← stopgrad(μ θ⁻ + (1 − μ) θ)).

Only the trainable (LoRA) parameters get an EMA copy: the frozen base weights are shared by
θ and θ⁻. The target is evaluated with ``torch.func.functional_call`` on the same module, so
no second UNet is held in memory. The update matches diffusers' ``update_ema``
(``train_lcm_distill_sd_wds.py``), applied after every optimizer step.

The diffusers LoRA scripts use no EMA (``target: stopgrad``, the online weights under
``no_grad``); this class is used when the config asks for ``lcd.target: ema``.
"""
from __future__ import annotations

from typing import Iterable

import torch


class LoraEma:
    def __init__(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], decay: float):
        self.decay = float(decay)
        self.params = {name: p for name, p in named_params}
        self.shadow = {name: p.detach().clone().float() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        names = list(self.params)
        shadow = [self.shadow[n] for n in names]
        online = [self.params[n].detach().float() for n in names]
        torch._foreach_mul_(shadow, self.decay)
        torch._foreach_add_(shadow, online, alpha=1.0 - self.decay)

    def call(self, module: torch.nn.Module, *args, **kwargs):
        """Run ``module`` with the EMA values in place of the online LoRA weights."""
        values = {n: v.to(self.params[n].dtype) for n, v in self.shadow.items()}
        return torch.func.functional_call(module, values, args, kwargs, strict=False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"ema.{n}": v for n, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n in self.shadow:
            self.shadow[n].copy_(state[f"ema.{n}"])
