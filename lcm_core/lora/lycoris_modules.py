"""LyCORIS and other non-LoRA weight adapters, as ComfyUI's LoraLoader applies them.

One class per algorithm, with the same interface as :class:`.adapter.LoraModule`
(``rank``, ``scale``, ``alpha``, ``weight_shape``, ``delta_weight``, ``tensors``, ``to``,
``num_parameters``) plus ``algo``, ``multiplicative`` and ``apply_to`` (θ' from θ):

* :class:`LohaModule` — LoHa (Hyeon-Woo et al. 2022, FedPara Eq. 2):
  ΔW = (alpha/r) · (w1a @ w1b) ⊙ (w2a @ w2b); with Tucker cores ``hada_t1/t2`` each
  factor is ``einsum('ijkl,jr,ip->prkl', t, wb, wa)`` (``comfy/weight_adapter/loha.py``).
* :class:`LokrModule` — LoKr (Yeh et al. 2024, LyCORIS §3.2): ΔW = s · W1 ⊗ W2,
  W1 = ``lokr_w1`` or ``lokr_w1_a @ lokr_w1_b``, W2 = ``lokr_w2`` or ``lokr_w2_a @ lokr_w2_b``
  (Tucker: ``lokr_t2``); s = alpha / dim where dim is the inner rank of the decomposed
  factor (w2's when both are), else 1 (``comfy/weight_adapter/lokr.py``).
* :class:`FullModule` — ``diff`` (+ ``diff_b``): ΔW = diff, ΔB = diff_b (``comfy/lora.py``
  "diff" patches; LyCORIS "full").
* :class:`OftModule` / :class:`BoftModule` — orthogonal fine-tuning: W' = R W with a
  block-diagonal (OFT, Qiu et al. 2023) or butterfly (BOFT, Liu et al. 2024) Cayley
  rotation R = (I + Q)(I − Q)⁻¹, Q = B − Bᵀ, norm-constrained by alpha
  (``comfy/weight_adapter/oft.py``, ``boft.py``). Multiplicative: needs the base weight.
* DoRA (Liu et al. 2024, Eq. 5) is an optional ``dora_scale`` on LoRA, LoHa and LoKr
  modules (peft's ``lora_magnitude_vector`` is read as the same, reshaped (out, 1…)):
  W' = m · (W + ΔW) / ‖·‖, which depends on the weight it is applied to. ComfyUI
  renormalises against the *running* weight when patches stack, so DoRA results depend
  on the order of the adapters; :meth:`apply_to` mirrors ``weight_decompose`` exactly,
  including its quirk that on the output axis the norm is taken of the weight *before*
  the update.

Why hand-written rather than ``lycoris.functional``: the formulas are a few lines each,
``import lycoris`` takes seconds (it loads its whole training wrapper) and pulls einops,
toml and more into ComfyUI's environment, and ComfyUI's own semantics (LoKr's alpha rule,
DoRA's norm, OFT's constraint) are what must match. ``tests/test_lycoris_formats.py`` checks
every ΔW against ``lycoris.functional`` and the nodes patch through ComfyUI's own
``comfy.weight_adapter`` (``tests/comfy/test_comfy_lycoris.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from ..errors import AdapterFileError

LYCORIS_ROLES = (
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "diff", "diff_b", "oft_blocks", "rescale", "dora_scale",
)
ALGO_NAMES = {"lora": "LoRA", "locon": "LoCon", "lora_tucker": "LoRA (Tucker)", "loha": "LoHa", "lokr": "LoKr",
              "full": "full diff", "oft": "OFT", "boft": "BOFT"}
LOW_RANK_ALGOS = ("lora", "locon", "lora_tucker")


def _shape(t) -> tuple:
    return tuple(t.shape)


def _mat(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.to(dtype).reshape(t.shape[0], -1)


def _tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor, dtype) -> torch.Tensor:
    """``einsum('ijkl,jr,ip->prkl', t, wb, wa)`` (ComfyUI ``loha.py``/``lokr.py``): (out, in, kh, kw)."""
    return torch.einsum("ijkl,jr,ip->prkl", t.to(dtype), _mat(wb, dtype), _mat(wa, dtype))


def dora_apply(weight: torch.Tensor, dora_scale: torch.Tensor, diff: torch.Tensor, scale: float,
               strength: float) -> torch.Tensor:
    """ComfyUI ``comfy.weight_adapter.base.weight_decompose`` on a float32 working weight."""
    m = dora_scale.to(weight.dtype)
    calc = weight + diff * scale
    # Output axis: ComfyUI takes the norm of the weight *before* the update, m·(W+ΔW)/‖W‖, where peft's DoRA uses
    # ‖W+ΔW‖ (upstream PR Comfy-Org/ComfyUI#15458 proposes the latter; if it lands, follow it here and in the tests).
    if m.shape[0] == calc.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(
            weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = (calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True)
                .reshape(calc.shape[1], *[1] * (calc.dim() - 1)).transpose(0, 1))
    norm = norm + torch.finfo(weight.dtype).eps
    calc = calc * (m / norm)
    if strength != 1.0:
        return weight + strength * (calc - weight)
    return calc


def check_dora_scale(source, name: str, dora_scale: torch.Tensor | None, weight_shape) -> None:
    if dora_scale is None:
        return
    if not dora_scale.is_floating_point():
        raise AdapterFileError(source, f"{name}.dora_scale: dtype {dora_scale.dtype} is not floating point")
    out = weight_shape[0]
    inn = weight_shape[1] if len(weight_shape) > 1 and weight_shape[1] > 0 else None
    n = dora_scale.numel()
    # (out, 1, …): a 1-D (out,) is no LyCORIS layout (ComfyUI's weight_decompose fails on it and skips the module)
    on_out = dora_scale.dim() >= 2 and dora_scale.shape[0] == out and n == out
    on_in = dora_scale.dim() >= 2 and dora_scale.shape[0] == 1 and (inn is None or n == inn)
    if not (on_out or on_in):
        layouts = " (DoRA scales are (out, 1, …) or (1, in, …); a 1-D one names no axis)" if dora_scale.dim() == 1 else ""
        raise AdapterFileError(source, f"{name}.dora_scale: shape {_shape(dora_scale)} fits neither the output "
                                       f"({out}) nor the input axis of the weight {tuple(weight_shape)}{layouts}")


class _Base:
    """Shared behaviour; subclasses are dataclasses with the tensors as fields."""

    algo = "?"
    _tensor_fields: tuple[str, ...] = ()
    alpha: float | None
    dora_scale: torch.Tensor | None

    @property
    def multiplicative(self) -> bool:
        """True when θ' is not θ + ΔW with ΔW independent of θ (DoRA, OFT, BOFT)."""
        return self.dora_scale is not None

    @property
    def low_rank(self) -> bool:
        return False

    @property
    def is_conv(self) -> bool:
        return len(self.weight_shape) == 4

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f: getattr(self, f) for f in self._tensor_fields if getattr(self, f) is not None}
        if self.dora_scale is not None:
            out["dora_scale"] = self.dora_scale
        return out

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors().values())

    def to(self, dtype):
        return replace(self, **{k: v.to(dtype) for k, v in self.tensors().items()})

    def matrix_shape(self) -> tuple[int, int]:
        s = self.weight_shape
        return (int(s[0]), int(math.prod(s[1:])))

    def apply_to(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """θ' for a float32 working weight θ, as ComfyUI's ``calculate_weight``."""
        diff = self.unscaled_delta(weight.dtype).reshape(weight.shape)
        if self.dora_scale is not None:
            return dora_apply(weight, self.dora_scale, diff, self.scale, strength)
        return weight + diff * (strength * self.scale)

    def delta_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """ΔW (additive part, shaped like the base weight); DoRA's rescaling is not included."""
        return (self.unscaled_delta(dtype) * self.scale).reshape(self.weight_shape)


@dataclass
class LohaModule(_Base):
    w1a: torch.Tensor
    w1b: torch.Tensor
    w2a: torch.Tensor
    w2b: torch.Tensor
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    alpha: float | None = None
    dora_scale: torch.Tensor | None = None
    shape: tuple | None = field(default=None, compare=False)

    algo = "loha"
    _tensor_fields = ("w1a", "w1b", "w2a", "w2b", "t1", "t2")
    SUFFIX = {"w1a": "hada_w1_a", "w1b": "hada_w1_b", "w2a": "hada_w2_a", "w2b": "hada_w2_b",
              "t1": "hada_t1", "t2": "hada_t2"}

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    @property
    def weight_shape(self) -> tuple:
        if self.t1 is not None:
            return (int(self.w1a.shape[1]), int(self.w1b.shape[1]), *map(int, self.t1.shape[2:]))
        if self.shape is not None:
            return tuple(self.shape)
        return (int(self.w1a.shape[0]), int(math.prod(self.w1b.shape[1:])))

    def halves(self, dtype=torch.float32):
        """((A1, B1), (A2, B2)) with ΔW/scale = (A1 @ B1) ⊙ (A2 @ B2) as (out, in·k·k) matrices."""
        if self.t1 is not None:
            def half(t, wa, wb):
                core = torch.einsum("ijkl,jr->irkl", t.to(dtype), _mat(wb, dtype))
                return _mat(wa, dtype).T, core.reshape(core.shape[0], -1)
            return half(self.t1, self.w1a, self.w1b), half(self.t2, self.w2a, self.w2b)
        return (_mat(self.w1a, dtype), _mat(self.w1b, dtype)), (_mat(self.w2a, dtype), _mat(self.w2b, dtype))

    def unscaled_delta(self, dtype=torch.float32) -> torch.Tensor:
        if self.t1 is not None:
            return _tucker(self.t1, self.w1a, self.w1b, dtype) * _tucker(self.t2, self.w2a, self.w2b, dtype)
        (a1, b1), (a2, b2) = self.halves(dtype)
        return (a1 @ b1) * (a2 @ b2)

    def matrix_factors(self, dtype=torch.float32):
        """Exact (U, D), ΔW/scale = U @ D: the Hadamard product of two low-rank products is the
        face-splitting (row-wise Khatri–Rao) product of the factors, rank r1·r2, never dense."""
        (a1, b1), (a2, b2) = self.halves(dtype)
        u = (a1[:, :, None] * a2[:, None, :]).reshape(a1.shape[0], -1)
        d = (b1[:, None, :] * b2[None, :, :]).reshape(-1, b1.shape[1])
        return u, d

    def validate(self, source, name: str) -> None:
        for role, t in (("hada_w1_a", self.w1a), ("hada_w1_b", self.w1b), ("hada_w2_a", self.w2a),
                        ("hada_w2_b", self.w2b), ("hada_t1", self.t1), ("hada_t2", self.t2)):
            if t is not None and not t.is_floating_point():
                raise AdapterFileError(source, f"{name}.{role}: dtype {t.dtype} is not floating point")
        if (self.t1 is None) != (self.t2 is None):
            raise AdapterFileError(source, f"{name}: has only one of hada_t1/hada_t2 (Tucker LoHa needs both)")
        if self.t1 is not None:
            ok = (self.t1.dim() == 4 and self.t2.dim() == 4 and all(t.dim() == 2 for t in
                  (self.w1a, self.w1b, self.w2a, self.w2b))
                  and self.t1.shape[0] == self.w1a.shape[0] and self.t1.shape[1] == self.w1b.shape[0]
                  and self.t2.shape[0] == self.w2a.shape[0] and self.t2.shape[1] == self.w2b.shape[0]
                  and self.w1a.shape[1] == self.w2a.shape[1] and self.w1b.shape[1] == self.w2b.shape[1]
                  and self.t1.shape[2:] == self.t2.shape[2:])
            if not ok:
                raise AdapterFileError(source, f"{name}: Tucker LoHa shapes disagree: hada_w1_a {_shape(self.w1a)}, "
                                               f"hada_w1_b {_shape(self.w1b)}, hada_t1 {_shape(self.t1)}, hada_w2_a "
                                               f"{_shape(self.w2a)}, hada_w2_b {_shape(self.w2b)}, hada_t2 {_shape(self.t2)}")
        else:
            if self.w1a.dim() != 2 or self.w2a.dim() != 2 or self.w1b.dim() < 2 or self.w2b.dim() < 2:
                raise AdapterFileError(source, f"{name}: hada_w*_a must be 2-D (out, rank) and hada_w*_b (rank, in…), got "
                                               f"{_shape(self.w1a)}, {_shape(self.w1b)}, {_shape(self.w2a)}, {_shape(self.w2b)}")
            for i, (a, b) in ((1, (self.w1a, self.w1b)), (2, (self.w2a, self.w2b))):
                if a.shape[1] != b.shape[0]:
                    raise AdapterFileError(source, f"{name}: rank mismatch in hada_w{i}: hada_w{i}_a {_shape(a)} has "
                                                   f"rank {a.shape[1]} but hada_w{i}_b {_shape(b)} has rank {b.shape[0]}")
            if self.w1a.shape[0] != self.w2a.shape[0] or math.prod(self.w1b.shape[1:]) != math.prod(self.w2b.shape[1:]):
                raise AdapterFileError(source, f"{name}: the two LoHa products have different shapes "
                                               f"({self.w1a.shape[0]}×{math.prod(self.w1b.shape[1:])} vs "
                                               f"{self.w2a.shape[0]}×{math.prod(self.w2b.shape[1:])})")
        if min(self.rank, *self.weight_shape[:2]) == 0:
            raise AdapterFileError(source, f"{name}: zero rank or empty LoHa factor")
        _check_alpha(source, name, self.alpha)
        check_dora_scale(source, name, self.dora_scale, self.weight_shape)


@dataclass
class LokrModule(_Base):
    w1: torch.Tensor | None = None
    w1a: torch.Tensor | None = None
    w1b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2a: torch.Tensor | None = None
    w2b: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    alpha: float | None = None
    dora_scale: torch.Tensor | None = None
    shape: tuple | None = field(default=None, compare=False)

    algo = "lokr"
    _tensor_fields = ("w1", "w1a", "w1b", "w2", "w2a", "w2b", "t2")
    SUFFIX = {"w1": "lokr_w1", "w1a": "lokr_w1_a", "w1b": "lokr_w1_b", "w2": "lokr_w2", "w2a": "lokr_w2_a",
              "w2b": "lokr_w2_b", "t2": "lokr_t2"}

    @property
    def dim(self) -> int | None:
        """ComfyUI's alpha divisor: the inner rank of w2 if decomposed, else of w1, else none."""
        if self.w2 is None and self.w2b is not None:
            return int(self.w2b.shape[0])
        if self.w1 is None and self.w1b is not None:
            return int(self.w1b.shape[0])
        return None

    @property
    def scale(self) -> float:
        d = self.dim
        return float(self.alpha) / d if (self.alpha is not None and d is not None) else 1.0

    @property
    def rank(self) -> int:
        """The LyCORIS ``lora_dim`` when a factor is decomposed, else the Kronecker rank bound."""
        d = self.dim
        if d is not None:
            return d
        a, b = self.w1_shape()
        c, n = self.w2_matrix_shape()
        return int(min(a, b) * min(c, n))

    def w1_shape(self) -> tuple[int, int]:
        if self.w1 is not None:
            return (int(self.w1.shape[0]), int(self.w1.shape[1]))
        return (int(self.w1a.shape[0]), int(self.w1b.shape[1]))

    def w2_full_shape(self) -> tuple:
        if self.w2 is not None:
            return tuple(map(int, self.w2.shape))
        if self.t2 is not None:
            return (int(self.w2a.shape[1]), int(self.w2b.shape[1]), *map(int, self.t2.shape[2:]))
        return (int(self.w2a.shape[0]), *map(int, self.w2b.shape[1:]))

    def w2_matrix_shape(self) -> tuple[int, int]:
        s = self.w2_full_shape()
        return (s[0], int(math.prod(s[1:])))

    @property
    def weight_shape(self) -> tuple:
        a, b = self.w1_shape()
        s2 = self.w2_full_shape()
        if len(s2) == 4:
            return (a * s2[0], b * s2[1], s2[2], s2[3])
        if self.shape is not None:
            return tuple(self.shape)
        return (a * s2[0], b * int(math.prod(s2[1:])))

    def w1_factors(self, dtype):
        """(P1, Q1) with W1 = P1 @ Q1, the thinner of (W1, I) / (I, W1) when W1 is stored whole."""
        if self.w1 is None:
            return _mat(self.w1a, dtype), _mat(self.w1b, dtype)
        w1 = self.w1.to(dtype).reshape(self.w1.shape[0], self.w1.shape[1])
        a, b = w1.shape
        return (w1, torch.eye(b, dtype=dtype)) if b <= a else (torch.eye(a, dtype=dtype), w1)

    def w2_factors(self, dtype):
        if self.w2 is not None:
            w2 = _mat(self.w2, dtype)
            c, n = w2.shape
            return (w2, torch.eye(n, dtype=dtype)) if n <= c else (torch.eye(c, dtype=dtype), w2)
        if self.t2 is not None:
            core = torch.einsum("ijkl,jr->irkl", self.t2.to(dtype), _mat(self.w2b, dtype))
            return _mat(self.w2a, dtype).T, core.reshape(core.shape[0], -1)
        return _mat(self.w2a, dtype), _mat(self.w2b, dtype)

    def w1_matrix(self, dtype):
        p, q = self.w1_factors(dtype)
        return self.w1.to(dtype) if self.w1 is not None else p @ q

    def w2_matrix(self, dtype):
        if self.w2 is not None:
            return _mat(self.w2, dtype)
        p, q = self.w2_factors(dtype)
        return p @ q

    def unscaled_delta(self, dtype=torch.float32) -> torch.Tensor:
        return torch.kron(self.w1_matrix(dtype), self.w2_matrix(dtype))

    def matrix_factors(self, dtype=torch.float32):
        """Exact (U, D): kron(P1 Q1, P2 Q2) = kron(P1, P2) @ kron(Q1, Q2) (mixed-product rule)."""
        p1, q1 = self.w1_factors(dtype)
        p2, q2 = self.w2_factors(dtype)
        return torch.kron(p1, p2), torch.kron(q1, q2)

    def validate(self, source, name: str) -> None:
        for role, t in self.tensors().items():
            if not t.is_floating_point():
                raise AdapterFileError(source, f"{name}.{self.SUFFIX.get(role, role)}: dtype {t.dtype} is not floating point")
        if self.w1 is None and (self.w1a is None or self.w1b is None):
            raise AdapterFileError(source, f"{name}: LoKr needs lokr_w1 or both lokr_w1_a and lokr_w1_b (missing w1)")
        if self.w2 is None and (self.w2a is None or self.w2b is None):
            raise AdapterFileError(source, f"{name}: LoKr needs lokr_w2 or both lokr_w2_a and lokr_w2_b (missing w2)")
        if self.w1 is not None and self.w1.dim() != 2:
            raise AdapterFileError(source, f"{name}.lokr_w1: must be 2-D, got {_shape(self.w1)}")
        if self.w1 is None and (self.w1a.dim() != 2 or self.w1b.dim() != 2 or self.w1a.shape[1] != self.w1b.shape[0]):
            raise AdapterFileError(source, f"{name}: lokr_w1_a {_shape(self.w1a)} and lokr_w1_b {_shape(self.w1b)} "
                                           "do not multiply (truncated factor?)")
        if self.w2 is not None:
            if self.w2.dim() not in (2, 4):
                raise AdapterFileError(source, f"{name}.lokr_w2: must be 2-D or 4-D, got {_shape(self.w2)}")
        elif self.t2 is not None:
            if (self.t2.dim() != 4 or self.w2a.dim() != 2 or self.w2b.dim() != 2
                    or self.t2.shape[0] != self.w2a.shape[0] or self.t2.shape[1] != self.w2b.shape[0]):
                raise AdapterFileError(source, f"{name}: Tucker LoKr shapes disagree: lokr_t2 {_shape(self.t2)}, "
                                               f"lokr_w2_a {_shape(self.w2a)}, lokr_w2_b {_shape(self.w2b)}")
        elif self.w2a.dim() != 2 or self.w2b.dim() < 2 or self.w2a.shape[1] != self.w2b.shape[0]:
            raise AdapterFileError(source, f"{name}: lokr_w2_a {_shape(self.w2a)} and lokr_w2_b {_shape(self.w2b)} "
                                           "do not multiply (truncated factor?)")
        if min(*self.w1_shape(), *self.w2_matrix_shape()) == 0:
            raise AdapterFileError(source, f"{name}: empty LoKr factor")
        _check_alpha(source, name, self.alpha)
        check_dora_scale(source, name, self.dora_scale, self.weight_shape)


@dataclass
class FullModule(_Base):
    diff: torch.Tensor
    diff_b: torch.Tensor | None = None
    alpha: float | None = None  # never used by ComfyUI for "diff" patches; kept for round trips
    dora_scale: torch.Tensor | None = None

    algo = "full"
    _tensor_fields = ("diff", "diff_b")
    SUFFIX = {"diff": "diff", "diff_b": "diff_b"}

    @property
    def rank(self) -> int:
        return int(min(self.matrix_shape()))

    @property
    def scale(self) -> float:
        return 1.0

    @property
    def weight_shape(self) -> tuple:
        return tuple(map(int, self.diff.shape))

    @property
    def multiplicative(self) -> bool:
        return False

    def unscaled_delta(self, dtype=torch.float32) -> torch.Tensor:
        return self.diff.to(dtype)

    def matrix_factors(self, dtype=torch.float32):
        return None  # dense: merged by a dense SVD

    def apply_to(self, weight, strength):
        return weight + strength * self.diff.to(weight.dtype).reshape(weight.shape)

    def validate(self, source, name: str) -> None:
        for role, t in self.tensors().items():
            if not t.is_floating_point():
                raise AdapterFileError(source, f"{name}.{role}: dtype {t.dtype} is not floating point")
        if self.diff.dim() not in (2, 4) or self.diff.numel() == 0:
            raise AdapterFileError(source, f"{name}.diff: shape {_shape(self.diff)} is not a Linear (2-D) or Conv2d "
                                           "(4-D) weight")
        if self.diff_b is not None and tuple(self.diff_b.shape) != (self.diff.shape[0],):
            raise AdapterFileError(source, f"{name}.diff_b: shape {_shape(self.diff_b)} does not fit the "
                                           f"{self.diff.shape[0]} outputs of diff {_shape(self.diff)}")
        if self.dora_scale is not None:
            raise AdapterFileError(source, f"{name}: dora_scale on a full diff is not applied by ComfyUI")


@dataclass
class OftModule(_Base):
    """OFT: ``oft_blocks`` (k, n, n); the rotation acts on the output rows, grouped by n."""

    oft_blocks: torch.Tensor
    rescale: torch.Tensor | None = None  # read by ComfyUI's OFT loader but not applied
    alpha: float | None = None  # the norm constraint of Q (0 / None: none)
    dora_scale: torch.Tensor | None = None
    shape: tuple | None = field(default=None, compare=False)

    algo = "oft"
    _tensor_fields = ("oft_blocks", "rescale")
    SUFFIX = {"oft_blocks": "oft_blocks", "rescale": "rescale"}

    @property
    def multiplicative(self) -> bool:
        return True

    @property
    def rank(self) -> int:
        return int(self.oft_blocks.shape[-1])

    @property
    def scale(self) -> float:
        return 1.0

    def out_features(self) -> int:
        return int(self.oft_blocks.shape[0] * self.oft_blocks.shape[1])

    @property
    def weight_shape(self) -> tuple:
        return tuple(self.shape) if self.shape is not None else (self.out_features(), -1)

    def _rotation(self, dtype):
        blocks = self.oft_blocks.to(dtype)
        n = blocks.shape[-1]
        eye = torch.eye(n, dtype=dtype)
        q = blocks - blocks.transpose(-1, -2)
        alpha = 0.0 if self.alpha is None else float(self.alpha)
        if alpha > 0:
            q_norm = torch.norm(q) + 1e-8
            if q_norm > alpha:
                q = q * alpha / q_norm
        return ((eye + q) @ (eye - q).float().inverse()).to(dtype), eye

    def unscaled_delta(self, dtype=torch.float32):
        raise AdapterFileError(None, "OFT is multiplicative: ΔW depends on the base weight")

    def delta_weight(self, dtype=torch.float32):
        return self.unscaled_delta(dtype)

    def _diff(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        r, eye = self._rotation(weight.dtype)
        k, n = self.oft_blocks.shape[0], self.oft_blocks.shape[1]
        rest = weight.shape[1:]
        return torch.einsum("knm,kn...->km...", r * strength - strength * eye,
                            weight.reshape(k, n, *rest)).reshape(-1, *rest)

    def apply_to(self, weight, strength):
        diff = self._diff(weight, strength)
        if self.dora_scale is not None:
            return dora_apply(weight, self.dora_scale, diff, 0.0 if self.alpha is None else float(self.alpha), strength)
        return weight + strength * diff

    def validate(self, source, name: str) -> None:
        b = self.oft_blocks
        if not b.is_floating_point():
            raise AdapterFileError(source, f"{name}.oft_blocks: dtype {b.dtype} is not floating point")
        if b.dim() != 3 or b.shape[1] != b.shape[2] or b.numel() == 0:
            raise AdapterFileError(source, f"{name}.oft_blocks: expected (blocks, n, n), got {_shape(b)}")
        _check_alpha(source, name, self.alpha, allow_zero=True)
        check_dora_scale(source, name, self.dora_scale, self.weight_shape)


@dataclass
class BoftModule(OftModule):
    """BOFT: ``oft_blocks`` (m, k, b, b): m butterfly factors of k blocks of size b."""

    algo = "boft"

    def out_features(self) -> int:
        return int(self.oft_blocks.shape[1] * self.oft_blocks.shape[2])

    def _diff(self, weight: torch.Tensor, strength: float) -> torch.Tensor:  # OftModule.apply_to uses it
        r, eye = self._rotation(weight.dtype)
        boft_m, _, boft_b = self.oft_blocks.shape[:3]
        inp = org = weight
        r_b = boft_b // 2
        for i in range(boft_m):
            bi = r[i]
            g, k = 2, 2 ** i * r_b
            if strength != 1:
                bi = bi * strength + (1 - strength) * eye
            inp = inp.unflatten(0, (-1, g, k)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, boft_b))
            inp = torch.einsum("bij,bj...->bi...", bi, inp)
            inp = inp.flatten(0, 1).unflatten(0, (-1, k, g)).transpose(1, 2).flatten(0, 2)
        if self.rescale is not None:
            inp = inp * self.rescale.to(weight.dtype)
        return inp - org

    def validate(self, source, name: str) -> None:
        b = self.oft_blocks
        if not b.is_floating_point():
            raise AdapterFileError(source, f"{name}.oft_blocks: dtype {b.dtype} is not floating point")
        if b.dim() != 4 or b.shape[2] != b.shape[3] or b.numel() == 0 or b.shape[2] % 2:
            raise AdapterFileError(source, f"{name}.oft_blocks: expected (m, blocks, b, b) with even b, got {_shape(b)}")
        _check_alpha(source, name, self.alpha, allow_zero=True)
        check_dora_scale(source, name, self.dora_scale, self.weight_shape)


def _check_alpha(source, name, alpha, allow_zero: bool = False) -> None:
    if alpha is None:
        return
    if not math.isfinite(alpha):
        raise AdapterFileError(source, f"{name}.alpha is {alpha} (NaN/Inf)")
    if alpha == 0 and not allow_zero:
        raise AdapterFileError(source, f"{name}.alpha is 0 (ambiguous: sd-scripts reads it as alpha = rank, "
                                       "ComfyUI as a zero update)")


def algo_of(module) -> str:
    """``lora`` / ``locon`` / ``lora_tucker`` / ``loha`` / ``lokr`` / ``full`` / ``oft`` / ``boft``, ``+dora``."""
    base = getattr(module, "algo", None)
    if base is None:  # LoraModule
        base = "lora_tucker" if module.mid is not None else ("locon" if module.is_conv else "lora")
    return base + ("+dora" if getattr(module, "dora_scale", None) is not None else "")


def build_lycoris_module(source, name: str, roles: dict[str, torch.Tensor], alpha: float | None):
    """A LyCORIS module from its tensors by role (suffix without the dot); None if no LyCORIS role."""
    get = roles.get
    dora = get("dora_scale")
    families = [f for f, keys in (("loha", ("hada_",)), ("lokr", ("lokr_",)), ("full", ("diff",)),
                                  ("oft", ("oft_blocks", "rescale")))
                if any(r.startswith(keys) for r in roles)]
    if len(families) > 1:
        raise AdapterFileError(source, f"{name}: mixes {' and '.join(families)} tensors in one module")
    if not families:
        return None
    fam = families[0]
    if fam == "loha":
        missing = [r for r in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b") if r not in roles]
        if missing:
            raise AdapterFileError(source, f"{name}: LoHa module lacks {', '.join(missing)} (truncated or "
                                           "incomplete file?)")
        m = LohaModule(get("hada_w1_a"), get("hada_w1_b"), get("hada_w2_a"), get("hada_w2_b"),
                       get("hada_t1"), get("hada_t2"), alpha, dora)
    elif fam == "lokr":
        m = LokrModule(get("lokr_w1"), get("lokr_w1_a"), get("lokr_w1_b"), get("lokr_w2"), get("lokr_w2_a"),
                       get("lokr_w2_b"), get("lokr_t2"), alpha, dora)
    elif fam == "full":
        if "diff" not in roles:
            raise AdapterFileError(source, f"{name}: has diff_b but no diff (bias-only patches are not supported)")
        m = FullModule(get("diff"), get("diff_b"), alpha, dora)
    else:
        blocks = get("oft_blocks")
        if blocks is None:
            raise AdapterFileError(source, f"{name}: has rescale but no oft_blocks")
        cls = BoftModule if blocks.dim() == 4 else OftModule
        m = cls(blocks, get("rescale"), alpha, dora)
    m.validate(source, name)
    return m


def _x(shape) -> str:
    return "×".join(str(int(d)) for d in shape)


def describe_module(module) -> dict:
    """``{"algorithm", "rank", "factors", "alpha", "weight_shape"}`` for ``lcm-lora inspect``."""
    algo = algo_of(module)
    base = algo.split("+")[0]
    if base in LOW_RANK_ALGOS:
        factors = f"down {_x(module.down.shape)}, up {_x(module.up.shape)}" + (
            f", mid {_x(module.mid.shape)}" if module.mid is not None else "")
    elif base == "loha":
        factors = (f"w1 {_x(module.w1a.shape)}·{_x(module.w1b.shape)} ⊙ w2 {_x(module.w2a.shape)}·"
                   f"{_x(module.w2b.shape)}" + (f", Tucker cores {_x(module.t1.shape)}" if module.t1 is not None else ""))
    elif base == "lokr":
        w1 = _x(module.w1.shape) if module.w1 is not None else f"{_x(module.w1a.shape)}·{_x(module.w1b.shape)}"
        if module.w2 is not None:
            w2 = _x(module.w2.shape)
        else:
            w2 = f"{_x(module.w2a.shape)}·{_x(module.w2b.shape)}" + (
                f" (Tucker core {_x(module.t2.shape)})" if module.t2 is not None else "")
        factors = f"w1 {w1} ⊗ w2 {w2}"
    elif base == "full":
        factors = f"dense {_x(module.diff.shape)}" + (" + bias" if module.diff_b is not None else "")
    elif base == "oft":
        factors = f"{module.oft_blocks.shape[0]} blocks of {module.oft_blocks.shape[1]}×{module.oft_blocks.shape[2]}"
    else:
        m, k, b = module.oft_blocks.shape[:3]
        factors = f"{m} butterfly factors × {k} blocks of {b}×{b}"
    if "+dora" in algo:
        factors += f", DoRA magnitude {_x(module.dora_scale.shape)}"
    shape = tuple(module.weight_shape)
    return {"algorithm": algo, "rank": int(module.rank), "factors": factors, "alpha": module.alpha,
            "weight_shape": [d for d in shape]}
