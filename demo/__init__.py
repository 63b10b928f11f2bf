"""Embedded end-to-end demo and fidelity benchmark: tiny teacher → LCM-LoRA → steps-vs-quality report.

``lcm-lora demo [--out DIR] [--fast]`` (:mod:`.cli`) runs :func:`.run.run_demo_pipeline`: the shipped
digit teacher (:mod:`.teacher_assets`, trained by :mod:`.teacher_training`), an LCM-LoRA distilled by the
project's trainer, a style LoRA (:mod:`.style_lora`) merged with it (``lcm_core.merge``), and an
evaluation of every sampler (:mod:`.teacher_samplers`, :mod:`.student_sampling`) with the measuring
instruments of :mod:`.classifier` / :mod:`.metrics` (:mod:`.evaluate`), written up by :mod:`.report`
and :mod:`.plots`. Data: :mod:`.dataset`. See ``demo/README.md``.
"""
