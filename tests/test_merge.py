"""Weighted adapter merge (lcm_core.merge) against independent references.

References: the dense weighted sum computed here from the raw factors (kohya
``svd_merge_lora.py`` formulas: ``up @ down``; ``conv2d(down.permute(1,0,2,3), up)`` for conv;
Tucker as three stacked convolutions applied to an input), and the Eckart–Young optimum
``torch.linalg.svd`` of that dense sum in float64.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lcm_lora.lcm_core.errors import AdapterFileError, ArchitectureMismatchError, ConfigError, LcmLoraError
from lcm_lora.lcm_core.lora import LoraAdapter, LoraModule
from lcm_lora.lcm_core.merge import RECIPE_METADATA_KEY, merge_adapters


def _rand(g, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype)


def linear(g, r, out, inn, alpha=None, dtype=torch.float32):
    return LoraModule(down=_rand(g, r, inn, dtype=dtype), up=_rand(g, out, r, dtype=dtype), alpha=alpha)


def conv(g, r, out, inn, k, alpha=None):
    return LoraModule(down=_rand(g, r, inn, k, k), up=_rand(g, out, r, 1, 1), alpha=alpha)


def tucker(g, r, out, inn, k, alpha=None):
    return LoraModule(down=_rand(g, r, inn, 1, 1), up=_rand(g, out, r, 1, 1), alpha=alpha, mid=_rand(g, r, r, k, k))


def reference_delta(m: LoraModule) -> torch.Tensor:
    """Dense ΔW in float64, written independently of LoraModule.delta_weight."""
    scale = 1.0 if m.alpha is None else m.alpha / m.down.shape[0]
    down, up = m.down.double(), m.up.double()
    if m.mid is not None:
        # compose the 1×1 down into the k×k mid, then the 1×1 up (two separate contractions)
        inner = torch.einsum("bdhw,di->bihw", m.mid.double(), down[:, :, 0, 0])
        inner = torch.einsum("ab,bihw->aihw", up[:, :, 0, 0], inner)
        return scale * inner
    if down.dim() == 2:
        return scale * (up @ down)
    return scale * F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)


def reference_sum(adapters, weights, key):
    return sum(w * reference_delta(a.modules[key]) for w, a in zip(weights, adapters) if key in a.modules)


def apply_lora(m: LoraModule, x: torch.Tensor) -> torch.Tensor:
    """The adapter as an operator (what a LoRA-injected model computes), float64."""
    scale = 1.0 if m.alpha is None else m.alpha / m.down.shape[0]
    if m.down.dim() == 2:
        return scale * (x @ m.down.double().T @ m.up.double().T)
    pad = (m.mid if m.mid is not None else m.down).shape[-1] // 2
    h = F.conv2d(x, m.down.double(), padding=0 if m.mid is not None else pad)
    if m.mid is not None:
        h = F.conv2d(h, m.mid.double(), padding=pad)
    return scale * F.conv2d(h, m.up.double())


def mixed_adapters(seed=0):
    """Three adapters: Linear / conv 3×3 / conv 1×1 / Tucker, different ranks and alphas,
    modules present in only some adapters."""
    g = torch.Generator().manual_seed(seed)
    a = LoraAdapter(
        modules={
            "unet.lin": linear(g, 4, 20, 30, alpha=2.0),
            "unet.conv3": conv(g, 3, 8, 6, 3),
            "unet.conv1": conv(g, 2, 7, 5, 1, alpha=1.0),
            "unet.tucker": tucker(g, 2, 8, 6, 3, alpha=1.0),
            "text_encoder.only_a": linear(g, 3, 9, 11, alpha=6.0),
        },
        architecture="sdxl",
    )
    b = LoraAdapter(
        modules={
            "unet.lin": linear(g, 8, 20, 30, alpha=4.0),
            "unet.conv3": conv(g, 5, 8, 6, 3, alpha=5.0),
            "unet.conv1": conv(g, 4, 7, 5, 1),
            "unet.tucker": conv(g, 3, 8, 6, 3, alpha=3.0),
            "unet.only_b": linear(g, 2, 5, 7),
        },
        architecture=None,
    )
    c = LoraAdapter(modules={"unet.lin": linear(g, 6, 20, 30, alpha=1.5), "unet.conv3": conv(g, 2, 8, 6, 3)})
    return [a, b, c]


WEIGHTS = [0.8, -1.3, 0.45]


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_concat_equals_dense_sum():
    adapters = mixed_adapters()
    merged, report = merge_adapters(adapters, WEIGHTS, method="concat", progress=False)
    keys = {k for a in adapters for k in a.modules}
    assert set(merged.modules) == keys
    for key, m in merged.modules.items():
        ref = reference_sum(adapters, WEIGHTS, key)
        assert m.alpha is None
        assert m.delta_weight(torch.float64).shape == ref.shape
        assert rel(m.delta_weight(torch.float64), ref) < 1e-6, key
        assert m.rank == sum(a.modules[key].rank for a in adapters if key in a.modules)
        assert report.per_module[key] == 0.0
    assert report.total_relative_error == 0.0
    assert sorted(report.partial_modules) == sorted(["unet.conv1", "unet.tucker", "unet.only_b", "text_encoder.only_a"])
    assert merged.architecture == "sdxl"


def test_concat_operator_equivalence_on_inputs():
    """The merged adapter applied to an input equals Σ λ_i (adapter_i applied to it)."""
    adapters = mixed_adapters(1)
    merged, _ = merge_adapters(adapters, WEIGHTS, method="concat", progress=False)
    g = torch.Generator().manual_seed(5)
    for key, m in merged.modules.items():
        shape = m.weight_shape
        x = torch.randn(3, shape[1], generator=g) if len(shape) == 2 else torch.randn(2, shape[1], 6, 6, generator=g)
        x = x.double()
        ref = sum(w * apply_lora(a.modules[key], x) for w, a in zip(WEIGHTS, adapters) if key in a.modules)
        assert rel(apply_lora(m, x), ref) < 1e-6, key


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_svd_is_eckart_young_optimum(rank):
    adapters = mixed_adapters(2)
    merged, report = merge_adapters(adapters, WEIGHTS, method="svd", rank=rank, progress=False)
    err_sq = norm_sq = 0.0
    for key, m in merged.modules.items():
        ref = reference_sum(adapters, WEIGHTS, key)
        mat = ref.reshape(ref.shape[0], -1)
        U, S, Vh = torch.linalg.svd(mat, full_matrices=False)
        r = min(rank, S.numel(), sum(a.modules[key].rank for a in adapters if key in a.modules))
        assert m.rank == r, key
        best = (U[:, :r] * S[:r]) @ Vh[:r]
        expected_err = float(S[r:].square().sum().sqrt() / S.square().sum().sqrt())
        got = m.delta_weight(torch.float64).reshape(mat.shape)
        assert abs(rel(got, mat) - expected_err) < 1e-5, key
        assert abs(report.per_module[key] - expected_err) < 1e-5, key
        assert float((got - best).norm() / mat.norm()) < 1e-5, key  # the truncated dense SVD itself
        err_sq += float(S[r:].square().sum())
        norm_sq += float(S.square().sum())
    assert abs(report.total_relative_error - math.sqrt(err_sq / norm_sq)) < 1e-5
    assert report.per_module_rank == {k: m.rank for k, m in merged.modules.items()}


def test_svd_default_rank_is_largest_input_rank_per_module():
    adapters = mixed_adapters(3)
    merged, report = merge_adapters(adapters, WEIGHTS, method="svd", progress=False)
    for key, m in merged.modules.items():
        assert m.rank == max(a.modules[key].rank for a in adapters if key in a.modules)
    assert report.rank is None


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99])
def test_svd_energy_threshold(energy):
    adapters = mixed_adapters(4)
    merged, report = merge_adapters(adapters, WEIGHTS, method="svd", energy=energy, progress=False)
    for key, m in merged.modules.items():
        ref = reference_sum(adapters, WEIGHTS, key)
        S = torch.linalg.svdvals(ref.reshape(ref.shape[0], -1))
        frac = torch.cumsum(S**2, 0) / (S**2).sum()
        expected = next(i + 1 for i in range(S.numel()) if frac[i] >= energy)
        assert m.rank == expected, key
        assert 1.0 - report.per_module[key] ** 2 >= energy - 1e-6
        assert 1.0 - report.per_module[key] ** 2 == pytest.approx(float(frac[expected - 1]), abs=1e-6)


def test_svd_energy_one_is_exact():
    adapters = mixed_adapters(4)
    merged, report = merge_adapters(adapters, WEIGHTS, method="svd", energy=1.0, progress=False)
    for key, m in merged.modules.items():
        assert rel(m.delta_weight(torch.float64), reference_sum(adapters, WEIGHTS, key)) < 1e-5, key
    assert report.total_relative_error < 1e-5


def test_svd_energy_and_rank_take_the_smaller():
    adapters = mixed_adapters(4)
    merged, _ = merge_adapters(adapters, WEIGHTS, method="svd", energy=0.999, rank=2, progress=False)
    assert max(m.rank for m in merged.modules.values()) <= 2


def test_svd_with_enough_rank_is_exact_and_capped():
    """Target rank ≥ Σ r_i: output rank is Σ r_i (capped by the matrix size) and exact."""
    adapters = mixed_adapters(5)
    merged, report = merge_adapters(adapters, WEIGHTS, method="svd", rank=1000, progress=False)
    for key, m in merged.modules.items():
        ref = reference_sum(adapters, WEIGHTS, key)
        total = sum(a.modules[key].rank for a in adapters if key in a.modules)
        assert m.rank == min(total, ref.shape[0], ref[0].numel())
        assert rel(m.delta_weight(torch.float64), ref) < 1e-5
        assert report.per_module[key] < 1e-6


def test_rank_deficient_and_zero_modules():
    g = torch.Generator().manual_seed(6)
    same = linear(g, 4, 12, 10, alpha=4.0)
    fresh = LoraModule(down=_rand(g, 4, 10), up=torch.zeros(12, 4))  # freshly initialised LoRA: up = 0
    a = LoraAdapter(modules={"unet.same": same, "unet.cancel": same, "unet.fresh": fresh})
    b = LoraAdapter(modules={"unet.same": same, "unet.cancel": same, "unet.fresh": fresh})
    merged, report = merge_adapters([a, b], [0.5, 0.5], method="svd", rank=4, progress=False)
    assert rel(merged.modules["unet.same"].delta_weight(torch.float64), reference_delta(same)) < 1e-5
    assert report.per_module["unet.same"] < 1e-5  # rank-8 stack of rank 4: exact at rank 4
    assert torch.count_nonzero(merged.modules["unet.fresh"].delta_weight()) == 0
    assert report.per_module["unet.fresh"] == 0.0
    merged, report = merge_adapters([a, b], [1.0, -1.0], method="svd", rank=2, progress=False)
    assert float(merged.modules["unet.cancel"].delta_weight().abs().max()) < 1e-5
    for m in merged.modules.values():
        assert torch.isfinite(m.up).all() and torch.isfinite(m.down).all()
    assert math.isfinite(report.total_relative_error)


@pytest.mark.parametrize("method,kw", [("concat", {}), ("svd", {"rank": 3})])
@pytest.mark.parametrize("in_dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(method, kw, in_dtype):
    g = torch.Generator().manual_seed(7)
    a = LoraAdapter(modules={"unet.l": linear(g, 4, 24, 16, alpha=2.0, dtype=in_dtype)})
    b = LoraAdapter(modules={"unet.l": linear(g, 6, 24, 16, alpha=12.0, dtype=in_dtype)})
    w = [0.8, -1.0]
    ref = reference_sum([a, b], w, "unet.l")
    mat = ref.reshape(ref.shape[0], -1)
    S = torch.linalg.svdvals(mat)
    ideal = 0.0 if method == "concat" else float(S[3:].square().sum().sqrt() / S.square().sum().sqrt())

    merged, report = merge_adapters([a, b], w, method=method, progress=False, **kw)  # output stays low precision
    m = merged.modules["unet.l"]
    assert m.up.dtype == in_dtype and m.down.dtype == in_dtype
    actual = rel(m.delta_weight(torch.float64), ref)  # error of the stored factors, rounding included
    assert report.per_module["unet.l"] == pytest.approx(actual, rel=1e-3, abs=1e-7)
    assert actual >= ideal - 1e-6
    assert actual - ideal < (2e-2 if in_dtype == torch.bfloat16 else 3e-3)

    merged32, report32 = merge_adapters([a, b], w, method=method, dtype=torch.float32, progress=False, **kw)
    m32 = merged32.modules["unet.l"]
    assert m32.up.dtype == torch.float32
    assert abs(rel(m32.delta_weight(torch.float64), ref) - ideal) < 1e-5
    assert abs(report32.per_module["unet.l"] - ideal) < 1e-5


def test_linear_and_conv1x1_forms_of_one_module_merge():
    g = torch.Generator().manual_seed(8)
    lin = linear(g, 3, 10, 6)
    c11 = conv(g, 2, 10, 6, 1, alpha=1.0)
    a, b = LoraAdapter(modules={"unet.p": c11}), LoraAdapter(modules={"unet.p": lin})
    merged, _ = merge_adapters([a, b], [1.0, 0.5], method="concat", progress=False)
    m = merged.modules["unet.p"]
    assert m.weight_shape == (10, 6, 1, 1)
    ref = reference_delta(c11) + 0.5 * reference_delta(lin)[:, :, None, None]
    assert rel(m.delta_weight(torch.float64), ref) < 1e-6


def test_recipe_metadata_and_summary_json():
    adapters = mixed_adapters()
    merged, report = merge_adapters(adapters, WEIGHTS, method="svd", rank=3, progress=False, names=["s.safetensors", "lcm.safetensors", "c"])
    recipe = json.loads(merged.metadata[RECIPE_METADATA_KEY])
    assert recipe["method"] == "svd" and recipe["rank"] == 3
    assert [i["name"] for i in recipe["inputs"]] == ["s.safetensors", "lcm.safetensors", "c"]
    assert [i["weight"] for i in recipe["inputs"]] == WEIGHTS
    summary = json.loads(json.dumps(report.summary()))
    assert summary["total_relative_error"] == pytest.approx(report.total_relative_error)
    assert summary["modules"] == len(merged.modules)
    assert summary["output_rank_max"] == 3


def test_architecture_mismatch_names_both():
    g = torch.Generator().manual_seed(9)
    a = LoraAdapter(modules={"unet.l": linear(g, 2, 4, 4)}, architecture="sd1")
    b = LoraAdapter(modules={"unet.l": linear(g, 2, 4, 4)}, architecture="sdxl")
    with pytest.raises(ArchitectureMismatchError) as e:
        merge_adapters([a, b], [1.0, 1.0], progress=False, names=["style.safetensors", "lcm.safetensors"])
    msg = str(e.value)
    assert "sd1" in msg and "sdxl" in msg and "style.safetensors" in msg and "lcm.safetensors" in msg


def test_shape_conflict_names_module_and_file():
    g = torch.Generator().manual_seed(10)
    a = LoraAdapter(modules={"unet.l": linear(g, 2, 4, 6)})
    b = LoraAdapter(modules={"unet.l": linear(g, 2, 4, 5)})
    with pytest.raises(AdapterFileError) as e:
        merge_adapters([a, b], [1.0, 1.0], progress=False, names=["x.safetensors", "y.safetensors"])
    assert "unet.l" in str(e.value) and "y.safetensors" in str(e.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(weights=[1.0]),
        dict(method="ties"),
        dict(method="concat", rank=4),
        dict(method="svd", rank=0),
        dict(method="svd", energy=1.5),
        dict(weights=[1.0, float("nan")]),
    ],
)
def test_bad_arguments(kwargs):
    adapters = mixed_adapters()[:2]
    args = dict(weights=[1.0, 1.0], method="concat")
    args.update(kwargs)
    with pytest.raises(ConfigError):
        merge_adapters(adapters, progress=False, **args)
    with pytest.raises(LcmLoraError):
        merge_adapters([], [], progress=False)


@pytest.mark.parametrize("method", ["concat", "svd"])
def test_merge_keeps_the_recorded_sampling_recipe_and_base_architecture(method):
    """A style LoRA merged with a PCM adapter is sampled as that adapter: the output records its recipe (read back by
    ``read_recipe``, as the loader's ``auto`` does) and the base architecture the inputs agree on."""
    from lcm_lora.lcm_core.sampling_recipe import read_recipe, recipe_for_objective

    style, pcm, _ = mixed_adapters()
    pcm_recipe = recipe_for_objective("pcm", w_range=(3.0, 13.0), phases=4, phase_starts=(0, 15, 30, 41))
    pcm.metadata = {**pcm_recipe.to_metadata(), "lcm_lora.base_architecture": "custom"}
    style.metadata = {"ss_network_dim": "4"}
    merged, report = merge_adapters([style, pcm], [0.8, 1.0], method=method, progress=False, names=["style", "pcm"])
    assert read_recipe(merged.metadata) == pcm_recipe
    assert merged.metadata["lcm_lora.base_architecture"] == "custom"
    assert report.sampling_objective == "pcm" and report.notes == []
    assert json.loads(json.dumps(report.summary()))["sampling_objective"] == "pcm"


def test_merge_of_inputs_with_different_recipes_keeps_the_first_and_says_so():
    from lcm_lora.lcm_core.sampling_recipe import read_recipe, recipe_for_objective

    lcm, tcd, _ = mixed_adapters()
    lcm.metadata = {**recipe_for_objective("lcm").to_metadata(), "lcm_lora.base_architecture": "sd1"}
    tcd.metadata = {**recipe_for_objective("tcd", gamma=0.5).to_metadata(), "lcm_lora.base_architecture": "custom"}
    merged, report = merge_adapters([lcm, tcd], [1.0, 1.0], progress=False, names=["lcm.safetensors", "tcd.safetensors"])
    assert read_recipe(merged.metadata) == recipe_for_objective("lcm")
    assert "lcm_lora.base_architecture" not in merged.metadata  # the inputs disagree: none is claimed
    assert len(report.notes) == 1 and "keeps lcm.safetensors's (lcm)" in report.notes[0]
    assert "tcd.safetensors (tcd)" in report.notes[0]
    same, report = merge_adapters([lcm, lcm], [1.0, 1.0], progress=False)
    assert report.notes == [] and read_recipe(same.metadata) == recipe_for_objective("lcm")
    none, report = merge_adapters([mixed_adapters()[0]], [1.0], progress=False)
    assert read_recipe(none.metadata) is None and report.sampling_objective is None


def test_svd_merge_of_nearly_cancelling_inputs_is_exact_in_float64():
    """A − A′ with A′ = A + 1e-4·δ: float32 QRs of the stacked factors lose the small difference (true error 3e-3,
    reported 0); the merge redoes them in float64, so the result is the difference to float32 output rounding."""
    g = torch.Generator().manual_seed(0)
    up, down = torch.randn(64, 8, generator=g), torch.randn(8, 48, generator=g)
    a = LoraAdapter(modules={"unet.x": LoraModule(down=down.clone(), up=up.clone(), alpha=8.0)})
    b = LoraAdapter(modules={"unet.x": LoraModule(down=down + 1e-4 * torch.randn(8, 48, generator=g), up=up.clone(), alpha=8.0)})
    merged, report = merge_adapters([a, b], [1.0, -1.0], method="svd", rank=16, progress=False)
    exact = a.modules["unet.x"].delta_weight(torch.float64) - b.modules["unet.x"].delta_weight(torch.float64)
    assert rel(merged.modules["unet.x"].delta_weight(torch.float64), exact) < 1e-6
    assert report.total_relative_error < 1e-6
