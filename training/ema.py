"""EMA target network θ⁻ for LCD (LCM paper Algorithm 1: θ⁻ ← stopgrad(μ θ⁻ + (1 − μ) θ)).

Only the trainable (LoRA) parameters get an EMA copy: the frozen base weights are shared by
θ and θ⁻. The target is evaluated with ``torch.func.functional_call`` on the same module, so
no second UNet is held in memory. The update matches diffusers' ``update_ema``
(``train_lcm_distill_sd_wds.py``), applied after every optimizer step.

The diffusers LoRA scripts use no EMA (``target: stopgrad``, the online weights under
``no_grad``); this class is used when the config asks for ``lcd.target: ema``.

The same class with ``warmup=True`` is the *exported* EMA (``output.export_ema_decay``): an average of the
online weights that is written to the adapter instead of the last ones, as consistency models are
evaluated on an EMA of their weights (Song et al. 2023, arXiv 2303.01469, §6). Its decay per update
is diffusers' ``EMAModel.get_decay`` without ``use_ema_warmup``: 0 for the first update (a copy),
then min(μ, (1 + n) / (10 + n)) for the n-th, so that the zero-initialised LoRA of step 0 does not
linger in a short run's average.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch


class LoraEma:
    def __init__(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], decay: float, warmup: bool = False,
                 prefix: str = "ema."):
        self.decay = float(decay)
        self.warmup = warmup
        self.prefix = prefix
        self.params = {name: p for name, p in named_params}
        self.restart()

    def restart(self) -> None:
        """Start the average over from the current online weights (no updates yet)."""
        self.updates = 0
        self.shadow = {name: p.detach().clone().float() for name, p in self.params.items()}

    def current_decay(self) -> float:
        """μ of the next update: fixed, or with ``warmup`` diffusers' min(μ, (1 + n) / (10 + n)), n = updates so far."""
        if not self.warmup:
            return self.decay
        return 0.0 if self.updates == 0 else min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        names = list(self.params)
        shadow = [self.shadow[n] for n in names]
        online = [self.params[n].detach().float() for n in names]
        torch._foreach_mul_(shadow, decay)
        torch._foreach_add_(shadow, online, alpha=1.0 - decay)
        self.updates += 1

    def call(self, module: torch.nn.Module, *args, **kwargs):
        """Run ``module`` with the EMA values in place of the online LoRA weights."""
        values = {n: v.to(self.params[n].dtype) for n, v in self.shadow.items()}
        return torch.func.functional_call(module, values, args, kwargs, strict=False)

    @contextlib.contextmanager
    def swapped_in(self):
        """The EMA values in the online parameters for the duration (export), the online ones restored after."""
        online = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(online[n])

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"{self.prefix}{n}": v for n, v in self.shadow.items()}
        if self.warmup:  # the decay schedule depends on the update count: resume must continue it
            state[f"{self.prefix}updates"] = torch.tensor(self.updates, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n in self.shadow:
            self.shadow[n].copy_(state[f"{self.prefix}{n}"])
        if self.warmup:
            self.updates = int(state[f"{self.prefix}updates"])
