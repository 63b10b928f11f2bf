"""Headless LCM-LoRA distillation trainer (LCM paper Algorithm 1 with LoRA; diffusers'
``train_lcm_distill_lora_*`` scripts as the reference); ``lcd.objective: tcd`` trains a TCD-LoRA
instead (:mod:`.tcd`; rootonchair's ``tcd/train_tcd_distill_lora_*`` as the reference), ``pcm`` / ``tscd`` a
phased (PCM) or segmented (Hyper-SD TSCD) one (:mod:`.phased`). Never imports ComfyUI.

Public API (imported lazily so ``import lcm_lora.training`` stays cheap):

* ``train(config, output_dir, resume=None, overrides=(), progress=True) -> TrainResult``
  (:mod:`.trainer`); ``TrainResult(adapter_path, final_step, losses, status, output_dir, checkpoint)``.
* ``load_config(source, overrides=()) -> TrainConfig`` (:mod:`.config`; schema and defaults in :mod:`.config_schema`).
* ``read_events(output_dir) -> list[dict]`` — the run's ``events.jsonl`` (:mod:`.run_log`).
* ``build_tiny_teacher(folder, ...)`` — tiny random-weight teachers (:mod:`.tiny_models`).
* CLI: ``add_train_parser(subparsers)`` and ``run_train(args) -> int`` (:mod:`.cli`);
  ``python -m lcm_lora.training --config FILE ...``.
"""
from __future__ import annotations

_EXPORTS = {
    "train": ".trainer",
    "TrainResult": ".trainer",
    "NonFiniteLossError": ".trainer",
    "load_config": ".config",
    "TrainConfig": ".config",
    "read_events": ".run_log",
    "build_tiny_teacher": ".tiny_models",
    "add_train_parser": ".cli",
    "run_train": ".cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(name)
