"""Background training jobs for the ComfyUI trainer panel (no aiohttp here; see ``trainer_routes``).

A job runs the **same** trainer as ``lcm-lora train --config <job>/config.yaml`` in a child
process of ComfyUI's python (``sys.executable``; ``LCM_LORA_TRAIN_PYTHON`` may name another
interpreter, e.g. a venv with the trainer's dependencies — settable only from the environment,
never over HTTP). The child is started through ``trainer_launch.py``, which imports the pack
folder as ``lcm_lora`` whatever ComfyUI called it.

Files: every job lives in ``<ComfyUI output>/lcm_lora_training/<job id>/`` — ``job.json`` (the
request and state), ``config.yaml`` (the merged trainer config: the shipped config, the resolved
paths and the request's overrides, built by :func:`.trainer_requests.job_config` and written by the
trainer's own ``dump_config``), ``train.log`` (the child's stdout/stderr), ``prompts.jsonl`` (prompts-only
mode) and ``run/`` (the trainer's output folder: ``events.jsonl``, ``metrics.csv``,
``validation/step-*.png``, checkpoints, the adapter). Progress is read from ``run/events.jsonl``
(:mod:`lcm_lora.training.run_log` format), incrementally. On success the adapter is copied into
ComfyUI's first ``loras`` folder under a sanitised name, atomically and never over an existing
file (:mod:`lcm_core.safe_names`, :mod:`lcm_core.atomic_write`).

Cancel sends SIGTERM (the trainer saves a checkpoint at the next step boundary and exits 130),
then SIGKILL after ``cancel_timeout`` seconds. On Windows there is no SIGTERM for a child:
``terminate()`` stops it at once, without a checkpoint.

Confinement (hardening): every name that comes from a request is resolved by
:func:`lcm_core.safe_names.resolve_in_roots` inside the folders ComfyUI configured (``folder_paths``): no absolute
paths, no ``..``, no NUL or control characters, and a path whose real location (symlinks
followed) leaves its folder is refused. Models are only read; only the jobs folder under
ComfyUI's output directory and the ``loras`` folder are written.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..lcm_core.atomic_write import atomic_file
from ..lcm_core.errors import ConfigError, LcmLoraError, OutputExistsError
from ..lcm_core.safe_names import check_folder_links, is_inside, name_in_root, resolve_in_roots, safe_output_path, walk_confined
from .trainer_requests import (JOB_ID, RequestError, StartRequest, check_job_id, job_config, normal_cfg_configs, override_schema,
                               parse_start_request)

PACK_DIR = Path(__file__).resolve().parents[1]
LAUNCHER = Path(__file__).resolve().parent / "trainer_launch.py"
JOBS_SUBDIR = "lcm_lora_training"
ADAPTER_FILE = "adapter.safetensors"
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# The trainer's dependencies beyond ComfyUI (import name: pip requirement). The same as the
# ``train`` extra of pyproject.toml (tests/test_packaging.py checks that they agree).
TRAINER_REQUIREMENTS = {"diffusers": "diffusers>=0.30", "transformers": "transformers>=4.40", "peft": "peft>=0.12",
                        "accelerate": "accelerate>=0.30"}
TRAINER_MODULES = ("torch", "safetensors", "yaml", *TRAINER_REQUIREMENTS)
VALIDATION_IMAGE = re.compile(r"^step-\d{8}\.png$")
LOG_TAIL_BYTES = 4000
CONFIG_FILE = "config.yaml"  # the job's merged trainer config (next to job.json)


# ------------------------------------------------------------------ ComfyUI's folders
@dataclass
class ComfyFolders:
    """The folders a job may touch: models (read), input (read), output + loras (write)."""

    checkpoints: list[str]
    diffusers: list[str]
    loras: list[str]
    input: str
    output: str
    comfy_root: str | None = None
    checkpoint_names: Callable[[], list[str]] | None = None  # folder_paths.get_filename_list("checkpoints")

    @classmethod
    def from_folder_paths(cls) -> "ComfyFolders":
        import folder_paths

        return cls(
            checkpoints=list(folder_paths.get_folder_paths("checkpoints")),
            diffusers=list(folder_paths.get_folder_paths("diffusers")),
            loras=list(folder_paths.get_folder_paths("loras")),
            input=folder_paths.get_input_directory(),
            output=folder_paths.get_output_directory(),
            comfy_root=os.path.dirname(os.path.abspath(folder_paths.__file__)),
            checkpoint_names=lambda: list(folder_paths.get_filename_list("checkpoints")),
        )

    @property
    def jobs_root(self) -> Path:
        return Path(self.output) / JOBS_SUBDIR

    def list_checkpoints(self) -> list[str]:
        if self.checkpoint_names is not None:
            names = self.checkpoint_names()
        else:
            names = []
            for root in self.checkpoints:
                for dirpath, _, files in walk_confined(root, 4):
                    rel = os.path.relpath(dirpath, os.path.realpath(root))
                    names += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files
                              if f.lower().endswith(CHECKPOINT_EXTENSIONS)]
        out = []
        for n in names:  # only what resolve_in_roots would accept
            try:
                resolve_in_roots(self.checkpoints, n, "teacher")
                out.append(n.replace(os.sep, "/"))
            except ConfigError:
                pass
        return sorted(set(out))

    def list_diffusers(self) -> list[str]:
        """Diffusers pipeline folders (``unet/config.json``) in ComfyUI's ``diffusers`` model folders."""
        out = []
        for root in self.diffusers:
            real_root = os.path.realpath(root)
            for dirpath, dirnames, _ in walk_confined(root, 3):
                if os.path.isfile(os.path.join(dirpath, "unet", "config.json")):
                    out.append(name_in_root(dirpath, real_root))
                    dirnames[:] = []
        return sorted(set(out))

    def list_data_folders(self) -> list[str]:
        """Sub-folders of ComfyUI's input folder that hold images or a metadata file."""
        out = []
        root = os.path.realpath(self.input)
        for dirpath, _, files in walk_confined(root, 3):
            if dirpath == root:
                continue
            if any(f.lower().endswith(IMAGE_EXTENSIONS) or f in ("metadata.jsonl", "metadata.csv") for f in files):
                out.append(name_in_root(dirpath, root))
        return sorted(out)


# ------------------------------------------------------------------ jobs
def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


@dataclass
class Job:
    id: str
    folder: Path
    request: dict
    status: str = "running"  # running | cancelling | done | failed | cancelled
    pid: int | None = None
    returncode: int | None = None
    message: str = ""
    lora_name: str | None = None
    created: float = field(default_factory=time.time)
    ended: float | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    # progress of run/events.jsonl, read incrementally: where each event line starts (an events request reads its
    # page back from the file) and what the summary shows; a job of a million steps used to keep every parsed
    # event in memory (1.3 GB) and rescan them all at each poll
    _line_starts: list = field(default_factory=list, repr=False)
    _offset: int = field(default=0, repr=False)
    _last_step: dict = field(default_factory=dict, repr=False)
    _phase: str | None = field(default=None, repr=False)
    _checkpoints: list = field(default_factory=list, repr=False)
    end_event: dict | None = field(default=None, repr=False)  # the trainer's last "end" event
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def log_path(self) -> Path:
        return self.folder / "train.log"

    @property
    def events_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    @staticmethod
    def _parse(line: bytes) -> dict | None:
        try:
            event = json.loads(line)
        except ValueError:
            return None
        return event if isinstance(event, dict) else None

    def scan_events(self) -> int:
        """Read the complete lines of ``run/events.jsonl`` written since the last call (a half-written line waits),
        update the progress the summary shows, and return how many events the file holds."""
        with self._lock:
            try:
                with open(self.events_path, "rb") as f:
                    f.seek(self._offset)
                    chunk = f.read()
            except FileNotFoundError:
                return len(self._line_starts)
            end = chunk.rfind(b"\n")
            position = self._offset
            for line in chunk[: end + 1].splitlines(keepends=True):
                event = self._parse(line)
                if event is not None:
                    self._line_starts.append(position)
                    kind = event.get("event")
                    if kind == "step":
                        self._last_step = event
                    elif kind == "checkpoint":
                        self._checkpoints.append(os.path.basename(str(event.get("path"))))
                    if kind in ("setup", "start", "end"):
                        self._phase = kind
                    if kind == "end":
                        self.end_event = event
                position += len(line)
            self._offset += end + 1
            return len(self._line_starts)

    def read_events(self, since: int = 0, limit: int | None = None) -> list[dict]:
        """Events ``since`` … ``since + limit`` (all from ``since`` without a limit), read back from the file."""
        total = self.scan_events()
        with self._lock:
            starts = self._line_starts[since: total if limit is None else since + limit]
        if not starts:
            return []
        with open(self.events_path, "rb") as f:
            events = []
            for start in starts:
                f.seek(start)
                events.append(self._parse(f.readline()))
        return [e for e in events if e is not None]

    def log_tail(self, n: int = LOG_TAIL_BYTES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - n))
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def summary(self, with_log: bool = False) -> dict:
        self.scan_events()
        last = self._last_step
        out = {
            "id": self.id, "status": self.status, "pid": self.pid, "returncode": self.returncode,
            "message": self.message, "lora_name": self.lora_name, "created": self.created, "ended": self.ended,
            "phase": {"setup": "loading", "start": "training", "end": "ended"}.get(self._phase, "starting"),
            "step": last.get("step", 0), "max_steps": last.get("max_steps") or (self.request.get("overrides") or {}).get("max_steps"),
            "loss": last.get("loss"), "eta_s": last.get("eta_s"),
            "checkpoints": list(self._checkpoints),
            "images": self.images(), "request": self.request,
        }
        if with_log:
            out["log_tail"] = self.log_tail()
        return out

    def images(self) -> list[str]:
        folder = self.run_dir / "validation"
        if not folder.is_dir():
            return []
        return sorted(f for f in os.listdir(folder) if VALIDATION_IMAGE.match(f))

    def save(self) -> None:
        state = {k: getattr(self, k) for k in ("id", "status", "pid", "returncode", "message", "lora_name", "created", "ended", "request")}
        with atomic_file(self.folder / "job.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")


def _reap_if_our_child(pid) -> None:
    """After ComfyUI re-executed itself in place (same pid), the trainer of a job it ran is still our child: it stops
    on its own (its lifeline closed), and a thread collects its exit status so it does not stay a zombie."""
    if os.name != "posix" or not isinstance(pid, int) or pid <= 0:
        return
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return  # already ended: collected now
    except (ChildProcessError, OSError):
        return  # not our child (ComfyUI started afresh)

    def wait() -> None:
        try:
            os.waitpid(pid, 0)
        except (ChildProcessError, OSError):
            pass

    threading.Thread(target=wait, name=f"lcm-lora-reap-{pid}", daemon=True).start()


def _trainer_python() -> str:
    return os.environ.get("LCM_LORA_TRAIN_PYTHON") or sys.executable


_DEPS_CACHE: dict[str, list[str]] = {}


def install_command(python: str, missing: list[str]) -> str:
    """The exact pip command that gives ``python`` the missing trainer modules (the ``train`` extra's pins)."""
    packages = [TRAINER_REQUIREMENTS.get(m, {"yaml": "pyyaml"}.get(m, m)) for m in missing]
    return " ".join([shlex.quote(python), "-m", "pip", "install", *map(shlex.quote, packages)])


def missing_trainer_modules(python: str) -> list[str]:
    """Trainer dependencies ``python`` cannot import (``importlib.util.find_spec``; cached per interpreter)."""
    if python not in _DEPS_CACHE:
        code = ("import importlib.util, json; print(json.dumps([m for m in %r if importlib.util.find_spec(m) is None]))"
                % (TRAINER_MODULES,))
        try:
            proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
            missing = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else list(TRAINER_MODULES)
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            missing = list(TRAINER_MODULES)
        if missing:
            return missing  # not cached: the user may install them without restarting ComfyUI
        _DEPS_CACHE[python] = []
    return _DEPS_CACHE[python]


class JobManager:
    """Starts, tracks, cancels and publishes trainer-panel jobs (one running at a time)."""

    def __init__(self, folders: ComfyFolders, pack_dir: Path = PACK_DIR, python: str | None = None,
                 cancel_timeout: float = 60.0):
        self.folders = folders
        self.pack_dir = Path(pack_dir)
        self.python = python
        self.cancel_timeout = cancel_timeout
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._load_previous()

    # -- listing
    def configs(self) -> list[str]:
        return sorted(p.name for p in (self.pack_dir / "configs").glob("*.yaml") if p.is_file())

    def options(self) -> dict:
        f = self.folders
        configs = self.configs()
        return {
            "configs": configs,
            # configs with lcd.solver_guidance false → their lcd.normal_cfg (the panel's cfg field)
            "normal_cfg_configs": normal_cfg_configs([self.pack_dir / "configs" / c for c in configs]),
            "teachers": [{"type": "checkpoint", "name": n} for n in f.list_checkpoints()]
                        + [{"type": "diffusers", "name": n} for n in f.list_diffusers()],
            "data_folders": f.list_data_folders(),
            "overrides": override_schema(),
            "loras_folder": f.loras[0] if f.loras else None,
        }

    def list_jobs(self) -> list[dict]:
        return [j.summary() for j in sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)]

    def get(self, job_id: Any) -> Job:
        job = self.jobs.get(check_job_id(job_id))
        if job is None:
            raise RequestError("job", f"no job {job_id!r}", status=404)
        return job

    def events(self, job_id: Any, since: int = 0, limit: int = 5000) -> dict:
        job = self.get(job_id)
        since = max(0, int(since))
        chunk = job.read_events(since, limit)
        total = job.scan_events()
        return {"id": job.id, "status": job.status, "events": chunk, "next": since + len(chunk), "total": total}

    def image_path(self, job_id: Any, name: Any) -> Path:
        """A validation image of a job: ``step-XXXXXXXX.png`` inside ``run/validation`` only."""
        job = self.get(job_id)
        if not isinstance(name, str) or not VALIDATION_IMAGE.match(name):
            raise RequestError("image", f"{str(name)[:80]!r} is not a validation image name (step-XXXXXXXX.png)")
        try:
            return resolve_in_roots([job.run_dir / "validation"], name, "image")
        except ConfigError as e:
            raise RequestError.of(e) from None

    # -- start
    def _resolve(self, req: StartRequest) -> tuple[Path, Path, Path | None, Path]:
        """(shipped config, teacher, data folder or None, target in the loras folder), all confined."""
        configs = self.configs()
        if req.config not in configs:
            raise RequestError("config", f"{req.config!r} is not one of the shipped configs ({', '.join(configs)})", status=404)
        config = self.pack_dir / "configs" / req.config
        try:
            if req.teacher_type == "checkpoint":
                if not req.teacher.lower().endswith(CHECKPOINT_EXTENSIONS):
                    raise RequestError("teacher", f"{req.teacher!r} is not a checkpoint file ({', '.join(CHECKPOINT_EXTENSIONS)})")
                teacher = resolve_in_roots(self.folders.checkpoints, req.teacher, "teacher")
            else:
                teacher = resolve_in_roots(self.folders.diffusers, req.teacher, "teacher", kind="dir")
                if not (teacher / "unet" / "config.json").is_file():
                    raise RequestError("teacher", f"{req.teacher!r} is not a diffusers model folder (no unet/config.json)")
                root = next(r for r in self.folders.diffusers if is_inside(teacher, r))
                check_folder_links(teacher, root, "teacher")
            data = None
            if req.data is not None:
                data = resolve_in_roots([self.folders.input], req.data, "data", kind="dir")
                check_folder_links(data, self.folders.input, "data")
        except RequestError:
            raise
        except ConfigError as e:
            raise RequestError.of(e) from None
        if not self.folders.loras:
            raise RequestError("loras", "ComfyUI has no loras folder configured", status=500)
        try:
            target = safe_output_path(self.folders.loras[0], req.output_name, suffix=".safetensors", allow_subfolders=False)
        except LcmLoraError as e:
            raise RequestError("output_name", str(e)) from None
        if os.path.lexists(target):
            raise RequestError("output_name", f"{target.name!r} already exists in the loras folder; choose another name", status=409)
        return config, teacher, data, target

    def tokenizer(self, teacher_type: str) -> Path | None:
        """ComfyUI's bundled SD1 CLIP tokenizer for a single-file teacher (the trainer needs one)."""
        tokenizer = Path(self.folders.comfy_root or "", "comfy", "sd1_tokenizer")
        if teacher_type == "checkpoint" and self.folders.comfy_root and (tokenizer / "vocab.json").is_file():
            return tokenizer
        return None

    def start(self, body: Any) -> dict:
        """Validate, resolve and launch; returns the job summary. Raises :class:`RequestError`."""
        req = parse_start_request(body)
        config, teacher, data, target = self._resolve(req)
        # the merged config is checked before any folder or process exists (the trainer's own messages)
        job_config(req, config, teacher=teacher, data=data, prompts_file=Path("prompts.jsonl") if req.prompts else None,
                   tokenizer=self.tokenizer(req.teacher_type), adapter_name=ADAPTER_FILE)
        python = self.python or _trainer_python()
        missing = missing_trainer_modules(python)
        if missing:
            raise RequestError(python, f"cannot run the trainer: this python lacks {', '.join(missing)}. "
                                       f"Install them with: {install_command(python, missing)} — or start ComfyUI with "
                                       "LCM_LORA_TRAIN_PYTHON set to a python that has them; then restart ComfyUI", status=503)
        with self._lock:
            running = [j for j in self.jobs.values() if j.status in ("running", "cancelling")]
            if running:
                raise RequestError("trainer", f"job {running[0].id} is still running; cancel it or wait", status=409)
            job_id = new_job_id()
            folder = self.folders.jobs_root / job_id
            folder.mkdir(parents=True, exist_ok=False)
            request = {"config": req.config, "teacher": req.teacher, "teacher_type": req.teacher_type,
                       "data": req.data, "prompts": len(req.prompts) if req.prompts else None,
                       "output_name": target.name, "overrides": req.overrides}
            job = Job(job_id, folder, request)
            self.jobs[job_id] = job
        try:
            prompts_file = None
            if req.prompts:
                prompts_file = folder / "prompts.jsonl"  # JSON lines: read back exactly ('#', spaces, U+2028 kept)
                with atomic_file(prompts_file) as tmp:
                    tmp.write_text("".join(json.dumps({"text": p}) + "\n" for p in req.prompts), encoding="utf-8")
            cfg = job_config(req, config, teacher=teacher, data=data, prompts_file=prompts_file,
                             tokenizer=self.tokenizer(req.teacher_type), adapter_name=ADAPTER_FILE)
            from ..training.config import dump_config

            with atomic_file(folder / CONFIG_FILE) as tmp:
                tmp.write_text(dump_config(cfg), encoding="utf-8")
            cmd = [python, str(LAUNCHER), str(self.pack_dir), "--config", str(folder / CONFIG_FILE),
                   "--output", str(job.run_dir), "--no-progress"]
            job.request["command"] = cmd
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            with open(job.log_path, "ab") as log:
                log.write(("$ " + " ".join(cmd) + "\n").encode())
                log.flush()
                # stdin is the launcher's lifeline: our end of the pipe closes when ComfyUI exits, is killed or
                # re-executes itself in place (os.execv keeps the pid; the pipe is close-on-exec), and the
                # launcher then stops the trainer (checkpoint first)
                job.proc = subprocess.Popen(cmd, cwd=str(folder), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.PIPE, env=env)
            job.pid = job.proc.pid
            job.save()
        except Exception as e:
            job.status, job.message, job.ended = "failed", f"could not start the trainer: {type(e).__name__}: {e}", time.time()
            try:
                job.save()
            except Exception:
                pass
            raise RequestError("trainer", job.message, status=500) from None
        threading.Thread(target=self._watch, args=(job, target), name=f"lcm-lora-job-{job_id}", daemon=True).start()
        return job.summary()

    # -- cancel
    def cancel(self, job_id: Any) -> dict:
        job = self.get(job_id)
        with self._lock:
            if job.status not in ("running", "cancelling") or job.proc is None or job.returncode is not None:
                state = "ending" if job.status in ("running", "cancelling") else job.status  # exited, not yet recorded
                raise RequestError("job", f"job {job.id} is {state}; nothing to cancel", status=409)
            first = job.status == "running"
            job.status = "cancelling"
        if first and job.proc.poll() is None:
            try:
                if os.name == "posix":
                    job.proc.send_signal(signal.SIGTERM)  # trainer: checkpoint at the next step, exit 130
                else:
                    job.proc.terminate()
            except ProcessLookupError:
                pass
            timer = threading.Timer(self.cancel_timeout, self._kill, args=(job,))
            timer.daemon = True
            timer.start()
        return job.summary()

    @staticmethod
    def _kill(job: Job) -> None:
        if job.proc is not None and job.proc.poll() is None:
            job.message = "did not stop within the cancel timeout; killed"
            try:
                job.proc.kill()
            except ProcessLookupError:
                pass

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel every running job and wait (ComfyUI exiting)."""
        for job in list(self.jobs.values()):
            if job.status == "running":
                try:
                    self.cancel(job.id)
                except RequestError:
                    pass
        deadline = time.time() + timeout
        for job in list(self.jobs.values()):
            if job.proc is not None:
                try:
                    job.proc.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    job.proc.kill()

    # -- completion
    def _watch(self, job: Job, target: Path) -> None:
        rc = job.proc.wait()
        try:
            job.proc.stdin.close()  # the lifeline of a trainer that has ended
        except (AttributeError, OSError):
            pass
        with self._lock:  # from here on cancel() refuses the job (its check and write are under this lock too)
            job.returncode = rc
            cancelling = job.status == "cancelling"
        job.scan_events()
        end = job.end_event
        job.ended = time.time()
        finished = rc == 0 and end and end.get("status") == "finished" and end.get("adapter")
        if cancelling and not finished:  # a run that finished as the cancel came in still counts
            job.status = "cancelled"
            ckpt = end.get("checkpoint") if end else None
            job.message = (job.message + "; " if job.message else "") + (
                f"cancelled at step {end.get('step')}; checkpoint {os.path.basename(ckpt)}" if end and ckpt else
                "cancelled before the first step (nothing to checkpoint)" if end else f"cancelled (exit {rc})")
        elif finished:
            try:
                name = self._publish(job, Path(end["adapter"]), target)
                job.status, job.lora_name = "done", name
                job.message = f"finished at step {end.get('step')}; saved to loras/{name}"
            except Exception as e:  # noqa: BLE001 — the run folder keeps the adapter
                job.status = "failed"
                job.message = f"trained, but publishing to the loras folder failed: {e} (adapter kept in {job.run_dir})"
        else:
            job.status = "failed"
            detail = end.get("message") if end else None
            if not detail:
                errors = [l for l in job.log_tail().splitlines() if l.startswith("error:")]
                detail = errors[-1] if errors else (job.log_tail(600).strip().splitlines() or [""])[-1]
            job.message = f"trainer exited with status {rc}: {detail}"
        try:
            job.save()
        except Exception:
            pass

    def _publish(self, job: Job, adapter: Path, target: Path) -> str:
        """Copy the adapter into the loras folder atomically; never overwrite (``name_2`` … if taken meanwhile)."""
        if not is_inside(adapter, job.run_dir) or not adapter.is_file():
            raise RequestError(adapter, "the trainer reported an adapter outside its run folder")
        stem = target.name[: -len(".safetensors")]
        for i in range(1, 100):
            name = target.name if i == 1 else f"{stem}_{i}.safetensors"
            path = safe_output_path(self.folders.loras[0], name, suffix=".safetensors", allow_subfolders=False)
            try:
                with atomic_file(path) as tmp:
                    shutil.copyfile(adapter, tmp)
                    os.chmod(tmp, 0o644)  # mkstemp makes 0600; ComfyUI (maybe another user) must read it
                return path.name
            except OutputExistsError:
                continue
        raise RequestError(target, "no free file name in the loras folder")

    # -- jobs of earlier ComfyUI sessions
    def _load_previous(self) -> None:
        root = self.folders.jobs_root
        if not root.is_dir():
            return
        for folder in sorted(root.iterdir()):
            if not JOB_ID.match(folder.name) or folder.is_symlink() or not (folder / "job.json").is_file():
                continue
            try:
                state = json.loads((folder / "job.json").read_text(encoding="utf-8"))
                job = Job(folder.name, folder, state.get("request") or {})
                for key in ("status", "pid", "returncode", "message", "lora_name", "created", "ended"):
                    if key in state:
                        setattr(job, key, state[key])
            except (ValueError, OSError, TypeError):
                continue
            if job.status in ("running", "cancelling"):
                job.status, job.message = "failed", "ComfyUI stopped while this job ran (resume it with lcm-lora train --resume)"
                _reap_if_our_child(job.pid)
            self.jobs[job.id] = job
