"""How large an adapter's weight change is next to the fine-tune's (goal (d), universal acceleration):
``‖ΔW‖ / ‖W‖`` over the modules the adapter targets (Frobenius norms summed over modules), for each adapter
and for the demo's bold fine-tune (``W_ft − W``), on the demo cache's teacher.

    .venv/bin/python benchmarks/demo_quality/delta_norms.py --cache DIR ADAPTER.safetensors ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lcm_lora.demo.evaluate import load_teacher
from lcm_lora.lcm_core.lora import read_adapter
from lcm_lora.lcm_core.safetensors_io import read_safetensors


def _one(cache: Path, pattern: str) -> Path:
    found = sorted(cache.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"error: {cache}: expected one {pattern}, found {len(found)}")
    return found[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="a demo cache (teacher-*, finetune-*.safetensors)")
    ap.add_argument("adapters", nargs="+", type=Path)
    a = ap.parse_args()
    base = {k: v.detach().float() for k, v in load_teacher(_one(a.cache, "teacher-*")).unet.state_dict().items()}
    ft, _ = read_safetensors(_one(a.cache, "finetune-*.safetensors"))
    total = sum(float((ft[k].float() - w).pow(2).sum()) for k, w in base.items())
    print(json.dumps({"finetune_all_weights": round((total / sum(float(w.pow(2).sum()) for w in base.values())) ** 0.5, 4)}))
    for path in a.adapters:
        adapter = read_adapter(path)
        ft_sq = lora_sq = w_sq = 0.0
        for name, module in adapter.modules.items():
            key = name.removeprefix("unet.") + ".weight"
            if key not in base:
                raise SystemExit(f"error: {path}: module {name} is not a weight of the teacher's UNet")
            ft_sq += float((ft[key].float() - base[key]).pow(2).sum())
            lora_sq += float(module.delta_weight().float().pow(2).sum())
            w_sq += float(base[key].pow(2).sum())
        print(json.dumps({"adapter": str(path), "finetune_on_targets": round((ft_sq / w_sq) ** 0.5, 4),
                          "adapter_on_targets": round((lora_sq / w_sq) ** 0.5, 4)}))


if __name__ == "__main__":
    main()
