"""The demo's side process (demo/parallel.py) changes where stages run, never what they compute.

One tiny end-to-end pipeline (shipped digit teacher, 2-3 training steps per model, the PCM adapter included, 20
samples per row)
runs twice from empty caches: with the side process (``jobs=2``, and the style experiment sent to it)
and all in one process (``jobs=1``, style experiment in the main evaluation). Every number in the two
results.json (rows, style table, heat map, acceleration and negative-prompt studies, claims) and every
trained adapter tensor must be equal. (Slow: run with ``-m slow``.)
"""
import json

import pytest

from lcm_lora.demo import run as R
from lcm_lora.demo.finetune import FinetuneSettings
from lcm_lora.demo.style_lora import StyleLoraSettings

TINY = R.DemoConfig(
    preset="tiny", n_samples=20, samplers=("ddim",), teacher_steps=(1, 4), lcm_steps=(1, 4),
    lcm_overrides=("train.max_steps=2", "train.batch_size=4"), style=StyleLoraSettings(steps=2, batch_size=4),
    finetune=FinetuneSettings(steps=2, batch_size=4), heat_lambda1=(0.0, 0.8), heat_lambda2=(1.0,), heat_samples=20,
    neg_samples=20, neg_configs=((1.0, None), (2.0, 1)), style_reference_steps=4, accel_reference_steps=4,
    neg_teacher_steps=4, pcm=True, pcm_steps=(1, 4, 8))

NOT_RESULTS = {"timings", "seconds", "ms_per_image", "environment", "load_average", "path", "folder", "cached"}


def _numbers(obj):
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if k not in NOT_RESULTS}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


@pytest.mark.slow  # two tiny end-to-end runs: ≈ 1 min on an idle 2-core machine, ≈ 3 min on the shared one
def test_side_process_gives_the_same_results(tmp_path, monkeypatch):
    import torch

    before = torch.get_num_threads()
    runs = {}
    try:
        for jobs in (2, 1):
            monkeypatch.setattr(R, "style_in_side_process", lambda *a, _j=jobs, **k: _j == 2)
            torch.set_num_threads(1)
            runs[jobs] = R.run_demo_pipeline(tmp_path / f"out{jobs}", TINY, cache_dir=tmp_path / f"cache{jobs}",
                                             progress=False, jobs=jobs)
    finally:
        torch.set_num_threads(before)
    par, ser = runs[2], runs[1]
    assert par["environment"]["processes"] == 2 and ser["environment"]["processes"] == 1
    assert any("side process (style experiment" in k for k in par["timings"])
    assert not any("side process" in k for k in ser["timings"])
    a, b = (json.loads(json.dumps(_numbers(r), default=str)) for r in (par, ser))
    assert a["rows"] and a["style"]["rows"] and a["negative_prompts"]["rows"] and a["universal_acceleration"]["rows"]
    assert a == b
    from lcm_lora.lcm_core.safetensors_io import read_safetensors

    assert any(r["model"] == "pcm" for r in a["rows"]) and "goal_universal_acceleration_pcm" in a["claims"]
    for name in ("lcm_lora.safetensors", "tcd_lora.safetensors", "pcm_lora.safetensors", "style_lora.safetensors",
                 "merged_style_lcm_svd.safetensors", "merged_style_pcm_svd.safetensors"):
        x, y = (read_safetensors(tmp_path / out / "models" / name)[0] for out in ("out2", "out1"))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


@pytest.mark.parametrize("preset,expected", [("fast", False), ("full", True)])
def test_style_experiment_goes_where_it_evens_out_the_work(preset, expected):
    assert R.style_in_side_process(R.PRESETS[preset]) is expected


@pytest.mark.parametrize("quiet", [True, False])
def test_side_process_keeps_the_clis_quiet_setting(quiet):
    """The spawned worker starts with fresh logging: it re-applies the CLI's library silencing
    (diffusers' empty float32 warning, shard bars) exactly when the parent has it, so `--debug` still shows them."""
    import logging

    from lcm_lora.demo.parallel import SideProcess
    from lcm_lora.lcm_core import quiet_libraries as Q

    logger = logging.getLogger(Q._FP32_LOGGER)
    before = list(logger.filters)
    try:
        for f in [f for f in logger.filters if isinstance(f, Q._EmptyFp32ListFilter)]:
            logger.removeFilter(f)
        if quiet:
            Q.quiet_libraries()
        with SideProcess(jobs=2) as side:
            in_worker, _ = side.submit(Q.quiet_libraries_active).result()
        assert in_worker is quiet
    finally:
        logger.filters[:] = before


def test_an_error_or_ctrl_c_stops_the_side_process_at_once():
    """Leaving the SideProcess block on an exception (an error, Ctrl-C) terminates the worker and its running job:
    a distillation or the fine-tune of minutes used to run on to its end before the demo exited."""
    import time as _time

    from lcm_lora.demo.parallel import SideProcess

    t0 = _time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with SideProcess(jobs=2) as side:
            job = side.submit(_time.sleep, 120)
            _time.sleep(1.0)  # the worker has started the job
            processes = list(side._pool._processes.values())
            raise KeyboardInterrupt
    assert _time.perf_counter() - t0 < 60 and processes and not any(p.is_alive() for p in processes)
    with SideProcess(jobs=2) as side:  # without an exception the running job is waited for, as before
        job = side.submit(_time.sleep, 0.2)
    assert job._fut.done()


def test_an_interrupted_distillation_is_an_interruption(monkeypatch, tmp_path):
    """The trainer takes the Ctrl-C itself (status interrupted): the demo stops as interrupted (the CLI's "error:
    interrupted", 130), not with "LCM-LoRA distillation did not finish"."""
    import lcm_lora.training as training
    from lcm_lora.training.trainer import TrainResult

    monkeypatch.setattr(training, "train", lambda *a, **k: TrainResult(
        adapter_path=None, final_step=3, status="interrupted", output_dir=tmp_path, checkpoint=None, start_step=0))
    (tmp_path / "teacher").mkdir()
    (tmp_path / "data").mkdir()
    with pytest.raises(KeyboardInterrupt):
        R.distil_adapter(tmp_path / "cache", R.PRESETS["fast"], tmp_path / "teacher", tmp_path / "data", False)
