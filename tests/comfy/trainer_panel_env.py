"""Fixtures of the trainer-panel tests (pytest plugin: ``pytest_plugins = ("trainer_panel_env",)``).

One headless ComfyUI for the panel tests (HTTP and browser), separate from the session server of
``conftest.py`` so that the jobs, the published adapters and the booby-trapped symlinks here never
show up in the other tests' folders. Its base directory holds:

* ``models/diffusers/tiny-sd`` — a tiny random-weight diffusers teacher
  (``training/tiny_models.build_tiny_teacher``: the trainer's single-file loader only knows
  full-size SD/SDXL checkpoints, far too heavy for a default CPU test);
* ``input/tiny_shapes`` — 16 synthetic 16×16 images with captions;
* ``models/diffusers/broken`` — a model folder with an empty UNet config (a run that must fail);
* traps pointing to ``outside/`` (a folder next to the base directory that nothing may read or
  write): ``models/checkpoints/escape.safetensors``, ``models/diffusers/escape``,
  ``input/escape_data``, ``models/loras/escape.safetensors`` (dangling, target outside), and
  ``input/sneaky/leak.png`` (a link out of a real data folder).

The trainer runs in ComfyUI's python when that has the trainer's dependencies; otherwise (the dev
machine's ComfyUI venv has no diffusers) ``LCM_LORA_TRAIN_PYTHON`` points the server at the test
interpreter, which does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import comfy_harness as H

TEACHER = "tiny-sd"
DATA = "tiny_shapes"
CONFIG = "tiny_cpu.yaml"
# A few dozen optimizer steps on the tiny teacher, validation grids every few steps.
TINY_OVERRIDES = {"max_steps": 8, "batch_size": 4, "rank": 4, "validation_every": 4, "validation_steps": [1, 2],
                  "checkpoint_every": 0, "learning_rate": 1e-3}


def _comfy_has_trainer_deps(python: Path) -> bool:
    code = "import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in ('diffusers', 'peft', 'transformers', 'accelerate')) else 1)"
    return subprocess.run([str(python), "-c", code], capture_output=True).returncode == 0


def tree_snapshot(folder: Path) -> dict:
    """{relative path: (size, mtime_ns)} of every entry (symlinks not followed)."""
    out = {}
    for dirpath, dirnames, files in os.walk(folder):
        for name in dirnames + files:
            p = Path(dirpath, name)
            st = os.lstat(p)
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


class PanelServer:
    """The ComfyUI server plus raw HTTP helpers for the panel routes."""

    def __init__(self, server: H.ComfyServer, outside: Path, trainer_python: str):
        self.server, self.outside, self.trainer_python = server, outside, trainer_python

    def __getattr__(self, name):
        return getattr(self.server, name)

    @property
    def jobs_root(self) -> Path:
        return self.server.output / "lcm_lora_training"

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = "application/json",
                timeout: float = 60) -> tuple[int, dict | bytes]:
        headers = {"Content-Type": content_type} if content_type else {}
        req = urllib.request.Request(self.server.url(path), data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        return status, (json.loads(raw) if "json" in ctype else raw)

    def post(self, path: str, obj) -> tuple[int, dict]:
        return self.request("POST", path, json.dumps(obj).encode())

    def get(self, path: str):
        return self.request("GET", path)

    def start(self, **body) -> dict:
        status, out = self.post("/lcm_lora/train/jobs", body)
        assert status == 201, out
        return out

    def job(self, job_id: str) -> dict:
        status, out = self.get(f"/lcm_lora/train/jobs/{job_id}")
        assert status == 200, out
        return out

    def wait(self, job_id: str, until=lambda j: j["status"] not in ("running", "cancelling"), timeout: float = 300,
             on_poll=None) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.job(job_id)
            if on_poll is not None:
                on_poll(job)
            if until(job):
                return job
            assert self.server.alive(), self.server.log_tail()
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s:\n{job.get('log_tail')}")


@pytest.fixture(scope="session")
def panel(tmp_path_factory):
    env = H.comfy_env()
    if isinstance(env, str):
        pytest.skip(env)
    comfy_path, python = env
    from lcm_lora.training.tiny_models import build_tiny_teacher, write_tiny_dataset

    work = tmp_path_factory.mktemp("trainer-panel")
    outside = work / "outside"
    (outside / "teacher" / "unet").mkdir(parents=True)
    (outside / "teacher" / "unet" / "config.json").write_text("{}")
    (outside / "secret.safetensors").write_bytes(b"not for the panel")
    (outside / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    server = H.ComfyServer(comfy_path, python, base_dir=work / "base")
    server.prepare()
    build_tiny_teacher(server.models / "diffusers" / TEACHER)
    write_tiny_dataset(server.base / "input" / DATA, n=16, size=16)
    (server.models / "diffusers" / "broken" / "unet").mkdir(parents=True)  # loads nowhere: the trainer must fail
    (server.models / "diffusers" / "broken" / "unet" / "config.json").write_text("{}")
    os.symlink(outside / "secret.safetensors", server.checkpoints / "escape.safetensors")
    os.symlink(outside / "teacher", server.models / "diffusers" / "escape")
    os.symlink(outside, server.base / "input" / "escape_data")
    sneaky = server.base / "input" / "sneaky"  # a real folder, but one "image" inside links out
    write_tiny_dataset(sneaky, n=2, size=16)
    os.symlink(outside / "img.png", sneaky / "leak.png")
    os.symlink(outside / "planted.safetensors", server.loras / "escape.safetensors")
    trainer_python = str(python) if _comfy_has_trainer_deps(python) else sys.executable
    old = os.environ.get("LCM_LORA_TRAIN_PYTHON")
    os.environ["LCM_LORA_TRAIN_PYTHON"] = trainer_python  # the server copies the environment at start
    try:
        server.start()
    finally:
        if old is None:
            os.environ.pop("LCM_LORA_TRAIN_PYTHON")
        else:
            os.environ["LCM_LORA_TRAIN_PYTHON"] = old
    try:
        yield PanelServer(server, outside, trainer_python)
    finally:
        server.stop()
        print(f"\ntrainer-panel ComfyUI log: {server.log_path}")


@pytest.fixture(scope="session")
def finished_job(panel) -> dict:
    """One tiny job run to the end through the routes; records what the polls saw while it ran."""
    seen = []
    job = panel.start(config=CONFIG, teacher=TEACHER, teacher_type="diffusers", data=DATA, output_name="tiny lcm",
                      overrides=TINY_OVERRIDES)
    final = panel.wait(job["id"], on_poll=lambda j: seen.append((j["status"], j["step"], j["loss"])), timeout=400)
    return {"start": job, "final": final, "seen": seen}
