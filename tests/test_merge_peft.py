"""lcm_core.merge against peft ``LoraModel.add_weighted_adapter`` (combination_type "cat" and
"svd") on a tiny torch model with two peft LoRA adapters (Linear, Conv 3×3, Conv 1×1; one module
targeted by only one adapter; different ranks and alphas; a negative weight)."""
from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

from lcm_lora.lcm_core.lora import LoraAdapter, LoraModule  # noqa: E402
from lcm_lora.lcm_core.merge import merge_adapters  # noqa: E402


def peft_model(tiny_torch_model):
    torch.manual_seed(0)
    base = tiny_torch_model()
    cfg_a = LoraConfig(r=4, lora_alpha=8, target_modules=["lin1", "lin2", "conv3", "conv1"], init_lora_weights=False)
    cfg_b = LoraConfig(r=6, lora_alpha=3, target_modules=["lin1", "conv3", "conv1"], init_lora_weights=False)
    model = get_peft_model(base, cfg_a, adapter_name="style")
    model.add_adapter("lcm", cfg_b)
    return model


def lora_layers(model):
    prefix = "base_model.model."
    return {name[len(prefix):]: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def to_adapter(model, name) -> LoraAdapter:
    """peft lora_A / lora_B weights → LoraModules (down = A, up = B, alpha = lora_alpha)."""
    modules = {}
    for path, layer in lora_layers(model).items():
        if name not in layer.lora_A:
            continue
        assert layer.scaling[name] == pytest.approx(layer.lora_alpha[name] / layer.r[name])
        modules["unet." + path] = LoraModule(
            down=layer.lora_A[name].weight.detach().clone(),
            up=layer.lora_B[name].weight.detach().clone(),
            alpha=float(layer.lora_alpha[name]),
        )
    return LoraAdapter(modules=modules)


WEIGHTS = [0.8, -1.1]


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_concat_matches_peft_cat(tiny_torch_model):
    model = peft_model(tiny_torch_model)
    a, b = to_adapter(model, "style"), to_adapter(model, "lcm")
    assert "unet.lin2" in a.modules and "unet.lin2" not in b.modules
    model.add_weighted_adapter(["style", "lcm"], WEIGHTS, "merged_cat", combination_type="cat")
    merged, report = merge_adapters([a, b], WEIGHTS, method="concat", progress=False)
    for path, layer in lora_layers(model).items():
        ours = merged.modules["unet." + path].delta_weight()
        theirs = layer.get_delta_weight("merged_cat").detach()
        assert ours.shape == theirs.shape
        assert rel(ours, theirs) < 1e-6, path
    assert report.partial_modules == ["unet.lin2"]


@pytest.mark.parametrize("rank", [2, 5])
def test_svd_matches_peft_svd(rank, tiny_torch_model):
    model = peft_model(tiny_torch_model)
    a, b = to_adapter(model, "style"), to_adapter(model, "lcm")
    model.add_weighted_adapter(["style", "lcm"], WEIGHTS, "merged_svd", combination_type="svd", svd_rank=rank)
    merged, report = merge_adapters([a, b], WEIGHTS, method="svd", rank=rank, progress=False)
    for path, layer in lora_layers(model).items():
        ours = merged.modules["unet." + path].delta_weight()
        theirs = layer.get_delta_weight("merged_svd").detach()
        exact = sum(w * layer.get_delta_weight(n).detach().double() for w, n in zip(WEIGHTS, ["style", "lcm"]) if n in layer.lora_A)
        assert ours.shape == theirs.shape
        assert rel(ours, theirs) < 1e-5, path
        assert report.per_module["unet." + path] == pytest.approx(rel(theirs, exact), abs=1e-5)
