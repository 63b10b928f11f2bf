"""Trainer-panel request checks without ComfyUI: request typing, the job's merged config, listings,
publishing.

``nodes/trainer_jobs.py`` and ``nodes/trainer_requests.py`` import nothing from ComfyUI (the folders
come in a ``ComfyFolders``), but ``lcm_lora.nodes`` itself does, so the modules are loaded on their
own here. The references are the file system itself (``os.path.realpath``; the confinement rules
are tested in ``test_path_confinement.py``) and the trainer's own config loader
(``training.config.load_config``), which must read back the ``config.yaml`` a job writes exactly.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    import lcm_lora  # noqa: F401  (parent package for the relative imports)

    spec = importlib.util.spec_from_file_location(f"lcm_lora.nodes.{name}", ROOT / "nodes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    finally:
        if name == "trainer_jobs":  # lcm_lora.nodes itself needs ComfyUI: leave no half-package behind
            del sys.modules[spec.name]
            del sys.modules["lcm_lora.nodes.trainer_requests"]
    return module


TR = _load("trainer_requests")
TJ = _load("trainer_jobs")




def test_listings_hide_what_would_be_refused(tree, tmp_path):
    root, outside = tree
    inp = tmp_path / "input"
    (inp / "imgs").mkdir(parents=True)
    (inp / "imgs" / "x.png").write_bytes(b"")
    (inp / "empty").mkdir()
    os.symlink(outside, inp / "escape")
    (outside / "y.png").write_bytes(b"")
    f = TJ.ComfyFolders(checkpoints=[str(root)], diffusers=[str(root)], loras=[str(tmp_path / "loras")], input=str(inp),
                        output=str(tmp_path / "out"))
    assert f.list_checkpoints() == ["a.safetensors", "link_in.safetensors", "sub/b.ckpt"]
    assert f.list_diffusers() == ["model"]
    assert f.list_data_folders() == ["imgs"]
    # ComfyUI's own list (folder_paths) is filtered the same way
    f.checkpoint_names = lambda: ["a.safetensors", "link_out.safetensors", "../x.safetensors"]
    assert f.list_checkpoints() == ["a.safetensors"]


def _body(**kw):
    return {"config": "tiny_cpu.yaml", "teacher": "t", "data": "d", "output_name": "o", **kw}


RAW = {"max_steps": 7, "learning_rate": 1e-5, "rank": 3, "alpha": 1.5, "batch_size": 4, "resolution": 32, "seed": 9,
       "mixed_precision": "bf16", "device": "cpu", "validation_every": 2, "validation_steps": [1, 4],
       "validation_prompts": ['a "quoted" cat, with: yaml # chars', "ünïcode"], "checkpoint_every": 0,
       "samples_per_prompt": 2, "gradient_accumulation": 2, "output_dtype": "fp32"}


def test_job_config_is_read_back_exactly_by_the_trainer(tmp_path):
    """The job's config.yaml (trainer's dump_config) loads with the trainer's load_config to the same
    config: shipped values, resolved paths, and every override the panel allows."""
    from lcm_lora.training.config import dump_config, load_config
    from lcm_lora.training.config_panel import panel_overrides

    # every allowed override is exercised: here on a guided config, normal_cfg (normal-CFG configs only, a
    # ConfigError on this one) on configs/pcm_normal_cfg_sd15.yaml in test_trainer_panel_normal_cfg.py
    assert set(RAW) | {"normal_cfg"} == set(panel_overrides()) == set(TR.override_schema())
    req = TR.parse_start_request(_body(overrides=RAW))
    teacher, data = tmp_path / "teacher", tmp_path / "data"
    cfg = TR.job_config(req, ROOT / "configs" / "tiny_cpu.yaml", teacher=teacher, data=data, adapter_name="adapter.safetensors")
    (tmp_path / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    back = load_config(tmp_path / "config.yaml")
    assert back == cfg  # dataclass equality (source excluded)
    for name, spec in panel_overrides().items():
        if name == "normal_cfg":
            continue
        section, key = spec["key"].split(".")
        assert getattr(getattr(back, section), key) == RAW[name], name
    shipped = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    assert back.lcd == shipped.lcd and back.data.cache_latents == shipped.data.cache_latents  # the rest is the shipped config
    assert (back.teacher.path, back.data.path, back.data.prompts) == (str(teacher), str(data), None)
    assert (back.output.format, back.output.name, back.logging.progress) == ("kohya", "adapter.safetensors", False)
    # prompts-only mode: the prompts file replaces the data folder
    req = TR.parse_start_request({**_body(), "data": None, "prompts": ["a cat"]})
    cfg = TR.job_config(req, ROOT / "configs" / "tiny_cpu.yaml", teacher=teacher, prompts_file=tmp_path / "p.txt",
                        adapter_name="adapter.safetensors")
    assert (cfg.data.path, cfg.data.prompts) == (None, str(tmp_path / "p.txt"))


def test_merged_config_errors_are_the_trainers(tmp_path):
    """A value the panel's bounds allow but the chosen config refuses: the trainer's own message, 400."""
    from lcm_lora.lcm_core.errors import ConfigError
    from lcm_lora.training.config import load_config

    shipped = tmp_path / "c.yaml"
    shipped.write_text("lcd:\n  w_min: 3.0\n  w_max: 15.0\n", encoding="utf-8")
    req = TR.parse_start_request(_body(overrides={"max_steps": 5}))
    cfg = TR.job_config(req, shipped, teacher=tmp_path, data=tmp_path, adapter_name="a.safetensors")
    assert cfg.train.max_steps == 5
    shipped.write_text("lcd:\n  w_min: 20.0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as trainer:
        load_config(shipped)
    with pytest.raises(TR.RequestError) as panel:
        TR.job_config(req, shipped, teacher=tmp_path, data=tmp_path, adapter_name="a.safetensors")
    assert panel.value.status == 400 and panel.value.problem == trainer.value.problem


def test_schema_comes_from_the_trainer_config():
    import dataclasses

    from lcm_lora.training import config as C

    schema = TR.override_schema()
    assert json.loads(json.dumps(schema)) == schema  # JSON-serialisable for the panel
    for name, spec in schema.items():
        section, key = spec["key"].split(".")
        field = next(f for f in dataclasses.fields(type(getattr(C.TrainConfig(), section))) if f.name == key)
        assert field.metadata["panel"]["name"] == name
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        assert spec["default"] == default
        if field.metadata["minimum"] is not None:
            assert spec["min"] >= field.metadata["minimum"]  # the panel never allows what the trainer refuses
        if field.metadata["choices"]:
            assert set(spec["choices"]) <= set(field.metadata["choices"])
    # the panel's form only offers allowed overrides
    js = (ROOT / "web" / "lcm_lora_trainer.js").read_text(encoding="utf-8")
    import re

    form = re.findall(r'\["(\w+)", "[^"]+", (?:\d+|"any")\]', js)
    assert form and set(form) <= set(schema), form


@pytest.mark.parametrize("body,fragment", [
    ([], "JSON object"), (_body(extra=1), "unknown field"), ({"config": "c"}, "missing field"),
    (_body(prompts=["p"]), "exactly one"), ({**_body(), "data": None}, "exactly one"),
    (_body(teacher_type="lora"), "teacher_type"), (_body(output_name="a/b"), "plain file name"),
    (_body(overrides=[]), "JSON object"), (_body(overrides={"teacher": "/etc"}), "unknown override"),
    (_body(overrides={"max_steps": 1.5}), "integer"), (_body(overrides={"max_steps": True}), "integer"),
    (_body(overrides={"learning_rate": "1e-4"}), "number"), (_body(overrides={"learning_rate": 2.0}), "<= 1.0"),
    (_body(overrides={"validation_steps": []}), "list of 1"), (_body(overrides={"validation_steps": [0]}), ">= 1"),
    (_body(overrides={"validation_steps": [1] * 7}), "list of 1 to 6"), (_body(overrides={"max_steps": 0}), ">= 1"),
    (_body(overrides={"validation_prompts": ["x" * 1001]}), "longer"), (_body(config="../x.yaml"), "'..'"),
    (_body(teacher="/etc/passwd"), "absolute"), (_body(data="a\x00b"), "control"),
    (_body(overrides={"validation_prompts": ["a\nb"]}), "control"), (_body(overrides={"device": "cuda; rm"}), "one of"),
    ({**_body(), "data": None, "prompts": []}, "list of 1"), ({**_body(), "data": None, "prompts": [3]}, "string"),
])
def test_bad_requests_name_the_field(body, fragment):
    with pytest.raises(TR.RequestError) as e:
        TR.parse_start_request(body)
    assert fragment in str(e.value) and e.value.status == 400


def test_publish_never_overwrites(tmp_path):
    loras = tmp_path / "loras"
    loras.mkdir()
    f = TJ.ComfyFolders(checkpoints=[], diffusers=[], loras=[str(loras)], input=str(tmp_path), output=str(tmp_path / "out"))
    m = TJ.JobManager(f, pack_dir=ROOT)
    job = TJ.Job("20260101-000000-abcdef", tmp_path / "job", {})
    job.run_dir.mkdir(parents=True)
    adapter = job.run_dir / "adapter.safetensors"
    adapter.write_bytes(b"new")
    (loras / "mine.safetensors").write_bytes(b"old")
    name = m._publish(job, adapter, loras / "mine.safetensors")
    assert name == "mine_2.safetensors" and (loras / "mine.safetensors").read_bytes() == b"old"
    assert (loras / name).read_bytes() == b"new"
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"x")
    with pytest.raises(TJ.RequestError, match="outside its run folder"):
        m._publish(job, outside, loras / "other.safetensors")


def test_launcher_imports_the_pack_under_any_folder_name(tmp_path):
    """A copy-free alias of the repo with a hyphenated name (as in custom_nodes/) runs the trainer CLI."""
    link = tmp_path / "comfyui-lcm-lora"
    link.symlink_to(ROOT, target_is_directory=True)
    # ComfyUI's own python (where lcm_lora is not installed) too, when the ComfyUI tests are configured
    pythons = [sys.executable] + [p for p in [os.environ.get("COMFYUI_PYTHON")] if p and os.access(p, os.X_OK)]
    for python in pythons:
        code = subprocess.run([python, str(link / "nodes" / "trainer_launch.py"), str(link), "--print-schema"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert code.returncode == 0, (python, code.stderr)
        assert "max_steps:" in code.stdout and "teacher:" in code.stdout
    probe = ("import runpy, sys; sys.argv = ['x', sys.argv[1]];"
             "import importlib; m = runpy.run_path(sys.argv[1] + '/nodes/trainer_launch.py', run_name='probe');"
             "m['load_pack'](sys.argv[1]); import lcm_lora; print(lcm_lora.__file__)")
    out = subprocess.run([sys.executable, "-c", probe, str(link)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(link / "__init__.py")


def test_missing_trainer_modules_give_the_exact_install_command(tmp_path):
    """The 503 names a pip command that installs the ``train`` extra's pins into that very python."""
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    assert sorted(TJ.TRAINER_REQUIREMENTS.values()) == sorted(extra)
    cmd = TJ.install_command("/opt/my python/bin/python", ["diffusers", "peft"])
    assert cmd == "'/opt/my python/bin/python' -m pip install 'diffusers>=0.30' 'peft>=0.12'"
    bare = tmp_path / "python"  # a python without the trainer's dependencies: -S and -I leave out site-packages
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")
    bare.chmod(0o755)
    missing = TJ.missing_trainer_modules(str(bare))
    assert {"diffusers", "peft", "transformers"} <= set(missing) and "json" not in missing
    f = TJ.ComfyFolders(checkpoints=[], diffusers=[str(tmp_path)], loras=[str(tmp_path / "loras")], input=str(tmp_path),
                        output=str(tmp_path / "out"))
    (tmp_path / "loras").mkdir()
    (tmp_path / "t" / "unet").mkdir(parents=True)
    (tmp_path / "t" / "unet" / "config.json").write_text("{}")
    (tmp_path / "d").mkdir()
    m = TJ.JobManager(f, pack_dir=ROOT, python=str(bare))
    with pytest.raises(TR.RequestError) as e:
        m.start(_body(teacher="t", teacher_type="diffusers", data="d"))
    assert e.value.status == 503 and TJ.install_command(str(bare), missing) in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing created


def test_events_are_read_back_from_the_file_page_by_page(tmp_path):
    """The job keeps where each event line starts, not the events: pages read back equal the file's events
    (non-object and broken lines skipped, a half-written last line waits), and the summary follows the last ones."""
    job = TJ.Job("20260101-000000-abcdef", tmp_path / "job", {"overrides": {"max_steps": 9}})
    job.run_dir.mkdir(parents=True)
    events = [{"event": "setup"}, {"event": "start"}] + [{"event": "step", "step": i, "loss": 1.0 / i, "max_steps": 9}
                                                         for i in range(1, 8)]
    events.insert(5, {"event": "checkpoint", "path": "/x/checkpoints/step-00000003"})
    lines = [json.dumps(e) for e in events]
    lines.insert(3, "[1, 2]")  # not an object
    lines.insert(6, "{broken")
    job.events_path.write_text("\n".join(lines) + "\n" + '{"event": "step", "st')  # the trainer is mid-line
    assert job.scan_events() == len(events)
    assert job.read_events() == events
    assert job.read_events(3, 4) == events[3:7] and job.read_events(len(events)) == []
    summary = job.summary()
    assert summary["step"] == 7 and summary["loss"] == 1.0 / 7 and summary["phase"] == "training"
    assert summary["checkpoints"] == ["step-00000003"]
    with open(job.events_path, "a") as f:
        f.write('ep": 8, "max_steps": 9}\n{"event": "end", "status": "finished", "step": 8}\n')
    assert job.read_events(len(events)) == [{"event": "step", "step": 8, "max_steps": 9},
                                            {"event": "end", "status": "finished", "step": 8}]
    assert job.summary()["phase"] == "ended" and job.end_event["status"] == "finished"
    assert not hasattr(job, "events")  # no copy of every event in memory


def test_a_job_whose_trainer_has_exited_cannot_be_cancelled_any_more(tmp_path):
    """cancel() and the completion watcher decide under one lock: once the exit code is recorded, cancel says 409
    (a cancel slipping between them used to leave the job 'cancelling' for good, blocking every new job)."""
    f = TJ.ComfyFolders(checkpoints=[], diffusers=[], loras=[], input=str(tmp_path), output=str(tmp_path / "out"))
    m = TJ.JobManager(f, pack_dir=ROOT)
    job = TJ.Job("20260101-000000-abcdef", tmp_path / "job", {})
    job.run_dir.mkdir(parents=True)
    job.proc = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE)
    job.proc.wait()
    m.jobs[job.id] = job
    job.returncode = 0  # what _watch records under the lock right after the trainer exits
    with pytest.raises(TJ.RequestError, match="is ending; nothing to cancel"):
        m.cancel(job.id)
    assert job.status == "running"


def test_the_launcher_stops_the_trainer_when_comfyui_closes_its_lifeline(tmp_path):
    """The trainer's stdin is a pipe only ComfyUI holds: its end of file (ComfyUI exited, or re-executed itself in
    place with the same pid) sends the trainer SIGTERM, on which it checkpoints and exits."""
    if os.name != "posix":
        pytest.skip("POSIX signals")
    probe = ("import runpy, signal, sys, threading, time; m = runpy.run_path(sys.argv[1], run_name='probe');"
             "signal.signal(signal.SIGTERM, lambda *a: (print('SIGTERM', flush=True), sys.exit(7)));"
             "assert m['_stdin_is_a_pipe']();"
             "threading.Thread(target=m['_watch_lifeline'], daemon=True).start(); print('ready', flush=True);"
             "[time.sleep(0.05) for _ in range(400)]; print('still running')")
    proc = subprocess.Popen([sys.executable, "-c", probe, str(ROOT / "nodes" / "trainer_launch.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.stdin.close()
    assert proc.wait(timeout=15) == 7 and proc.stdout.read().strip() == "SIGTERM"


def test_a_trainer_left_by_an_in_place_restart_is_reaped(tmp_path):
    """An in-place restart keeps the pid, so the old trainer is still our child: it is waited for, not left a zombie."""
    if os.name != "posix":
        pytest.skip("POSIX processes")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    TJ._reap_if_our_child(child.pid)
    import time

    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child.pid, 0)  # a zombie still answers
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the child was not reaped")
    TJ._reap_if_our_child(os.getpid())  # not our child: nothing happens
    child.returncode = 0  # (Popen's own wait would find it gone)
