"""Crash-safe training, measured (RELIABILITY.md section 3).

Real ``python -m lcm_lora.training`` processes on a tiny CPU teacher are SIGKILLed at chosen
instants of a checkpoint write (half-written file, complete but unpublished folder, published
but not pruned, half-pruned, between the two renames of a same-step overwrite, before the
adapter export is published) and at seeded random moments; the disk fills up (injected ENOSPC,
and a real small tmpfs in a private mount namespace); the loss turns NaN. After each fault:
``--resume`` must pick only complete checkpoints, and the run, resumed until it finishes, must
reproduce the uninterrupted run exactly — every logged loss, every checkpoint's tensors and the
exported adapter (bitwise, CPU). The oracle is an uninterrupted in-process run of the same config.

Faults are injected by a wrapper script (written below) that patches ``torch.save``,
``os.replace``, ``shutil.rmtree``, ``LcdLoss.__call__`` or the checkpoint counter in the child
before running the trainer's own CLI ``main`` — the production code has no fault hooks.
SIGTERM (checkpoint + exit 130 + resume) is covered by ``tests/test_train_signal.py``.
"""
from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lcm_lora.training import checkpoint as ckpt
from lcm_lora.training.run_log import read_events
from lcm_lora.training.trainer import train
from tiny_training import tiny_teacher_and_data

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
MAX_STEPS = 8
EXIT_ERROR, EXIT_DIVERGED = 2, 3

CHILD = r'''
"""Child: the trainer CLI with one fault from LCM_CRASH_FAULT (JSON: kind, nth)."""
import errno, io, json, os, shutil, signal, sys
import torch
torch.set_num_threads(1)
from lcm_lora.training import checkpoint as ckpt
from lcm_lora.training.cli import main

fault = json.loads(os.environ.get("LCM_CRASH_FAULT") or "{}")
kind, nth = fault.get("kind"), fault.get("nth", 1)
saves = {"n": 0}


def die():
    sys.stdout.flush(); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def armed():
    return saves["n"] == nth


def fill_disk(folder, leave):
    st = os.statvfs(folder)
    size = max(st.f_bavail * st.f_frsize - leave, 0)
    try:
        with open(os.path.join(folder, "filler.bin"), "wb") as f:
            f.write(b"\0" * size)
    except OSError:
        pass


real_save_checkpoint = ckpt.save_checkpoint
def save_checkpoint(output_dir, *args, **kwargs):
    saves["n"] += 1
    if kind == "fill_disk" and armed():
        fill_disk(output_dir, fault["leave"])
    return real_save_checkpoint(output_dir, *args, **kwargs)
ckpt.save_checkpoint = save_checkpoint

real_torch_save = torch.save
def torch_save(obj, f, *args, **kwargs):
    if armed() and kind in ("kill_mid_file", "enospc_mid_file"):
        buf = io.BytesIO()
        real_torch_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        if kind == "kill_mid_file":
            die()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_torch_save(obj, f, *args, **kwargs)
torch.save = torch_save

real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    s, d = os.path.basename(os.fspath(src)), os.path.basename(os.fspath(dst))
    publish = s.startswith(".step-") and s.endswith(".tmp")
    if armed() and kind == "kill_before_publish" and publish:
        die()
    if kind == "kill_before_export" and d == fault["name"]:
        die()
    real_replace(src, dst, *args, **kwargs)
    if armed() and ((kind == "kill_after_publish" and publish) or (kind == "kill_between_renames" and d.endswith(".replaced"))):
        die()
    if armed() and kind == "kill_mid_prune" and d.endswith(".deleting"):
        os.remove(os.path.join(os.fspath(dst), "lora.safetensors"))
        die()
os.replace = replace

if kind == "nan":
    from lcm_lora.training import lcd_step
    real_call, calls = lcd_step.LcdLoss.__call__, {"n": 0}
    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss = real_call(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == nth else loss
    lcd_step.LcdLoss.__call__ = poisoned

sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    teacher, data = tiny_teacher_and_data(root, n=8, size=16)
    child = root / "crash_child.py"
    child.write_text(CHILD)
    overrides = [f"teacher={teacher}", f"data={data}", f"max_steps={MAX_STEPS}", "batch_size=2", "lora.rank=4",
                 "lora.alpha=4", "validation.every=0", "logging.progress=false"]
    return root, child, overrides


@pytest.fixture(scope="module")
def reference(assets):
    """The uninterrupted run (in-process), keeping a checkpoint of every step."""
    root, _, overrides = assets
    out = root / "reference"
    stamps = []
    result = train(TINY, out, overrides=overrides + ["checkpoint.every=1", "checkpoint.keep=100"], progress=False,
                   on_step=lambda step, loss: stamps.append(time.monotonic()))
    assert result.status == "finished" and result.final_step == MAX_STEPS
    step_seconds = (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # one step + its checkpoint
    tensors = {step: ckpt.load_checkpoint(path).tensors for step, path in ckpt.list_checkpoints(out)}
    assert sorted(tensors) == list(range(1, MAX_STEPS + 1))
    return {"step_seconds": step_seconds, "losses": result.losses, "tensors": tensors, "adapter": load_file(out / "lcm_lora.safetensors"), "dir": out}


def _args(assets, out, resume=False, extra=()):
    _, child, overrides = assets
    args = [sys.executable, str(child), "--config", str(TINY), "--output", str(out), "--no-progress"]
    return args + (["--resume"] if resume else []) + overrides + ["checkpoint.every=2", "checkpoint.keep=2", *extra]


def _env(fault=None):
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", LCM_CRASH_FAULT=json.dumps(fault or {}))


def _run(assets, out, fault=None, resume=False, extra=(), prefix=()):
    done = subprocess.run([*prefix, *_args(assets, out, resume, extra)], capture_output=True, text=True,
                          env=_env(fault), timeout=300)
    return done.returncode, done.stderr


def _finish(assets, out, extra=()):
    """Resume in-process until the end (the fault-free tail; saves a process start-up)."""
    result = train(TINY, out, resume=True, overrides=_args(assets, out, extra=extra)[7:], progress=False)
    assert result.status == "finished" and result.final_step == MAX_STEPS
    return result


def _check_resumable(out, reference, expect_step):
    """Every published checkpoint is complete and equals the uninterrupted run at its step;
    ``--resume`` picks the newest one (``expect_step``)."""
    listed = ckpt.list_checkpoints(out)
    for step, path in listed:
        assert ckpt.verify_checkpoint(path) == step
        tensors = ckpt.load_checkpoint(path).tensors
        want = reference["tensors"][step]
        assert tensors.keys() == want.keys() and all(torch.equal(tensors[k], want[k]) for k in want), path
    picked = ckpt.resolve_resume(out, True)
    assert (picked and ckpt.checkpoint_step(picked)) == expect_step, (listed, picked)
    return listed


def _check_matches_reference(out, reference, first_step=1):
    """Every loss any process of this folder logged equals the uninterrupted run's loss at that step
    (steps ``first_step``..max all logged); the final checkpoint and the exported adapter are
    bitwise those of the uninterrupted run."""
    steps = [e for e in read_events(out) if e["event"] == "step"]
    assert {e["step"] for e in steps} == set(range(first_step, MAX_STEPS + 1))
    for e in steps:
        assert e["loss"] == reference["losses"][e["step"] - 1], e
    last_step, last = ckpt.list_checkpoints(out)[-1]
    assert last_step == MAX_STEPS
    final = ckpt.load_checkpoint(last).tensors
    assert all(torch.equal(final[k], v) for k, v in reference["tensors"][MAX_STEPS].items())
    adapter = load_file(out / "lcm_lora.safetensors")
    assert adapter.keys() == reference["adapter"].keys()
    assert all(torch.equal(adapter[k], v) for k, v in reference["adapter"].items())
    assert read_events(out)[-1]["status"] == "finished"


def _hidden(out):
    root = ckpt.checkpoints_dir(out)
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.is_dir() else []


def test_sigkill_at_each_instant_of_a_checkpoint_write(assets, reference, tmp_path):
    """One run folder, killed five times at the worst instants, resumed each time; then finished."""
    out = tmp_path / "run"
    killed = -signal.SIGKILL

    # 1. half of optimizer.pt written for step 4: only a hidden temp folder, resume picks step 2
    rc, err = _run(assets, out, {"kind": "kill_mid_file", "nth": 2})
    assert rc == killed, err[-2000:]
    _check_resumable(out, reference, 2)
    [tmp] = _hidden(out)
    assert tmp.startswith(".step-00000004.") and tmp.endswith(".tmp")
    assert not (ckpt.checkpoints_dir(out) / tmp / "trainer_state.json").exists()

    # 2. step 4 complete and fsynced but not yet renamed into place
    rc, err = _run(assets, out, {"kind": "kill_before_publish", "nth": 1}, resume=True)
    assert rc == killed, err[-2000:]
    _check_resumable(out, reference, 2)

    # 3. step 6 published, older ones not yet pruned (3 checkpoints for keep=2); leftovers of 1./2. swept
    rc, err = _run(assets, out, {"kind": "kill_after_publish", "nth": 2}, resume=True)
    assert rc == killed, err[-2000:]
    assert [s for s, _ in _check_resumable(out, reference, 6)] == [2, 4, 6]
    assert _hidden(out) == []

    # 4. final step-8 published, step 2 half-deleted during pruning
    rc, err = _run(assets, out, {"kind": "kill_mid_prune", "nth": 1}, resume=True)
    assert rc == killed, err[-2000:]
    assert [s for s, _ in _check_resumable(out, reference, 8)] == [4, 6, 8]
    assert _hidden(out) == [".step-00000002.deleting"]

    # 5. resumed at max_steps: nothing to train, killed while publishing the adapter
    final = ckpt.checkpoints_dir(out) / "step-00000008"
    inode = final.stat().st_ino
    rc, err = _run(assets, out, {"kind": "kill_before_export", "name": "lcm_lora.safetensors"}, resume=True)
    assert rc == killed, err[-2000:]
    assert not (out / "lcm_lora.safetensors").exists()
    assert [s for s, _ in _check_resumable(out, reference, 8)] == [4, 6, 8]

    _finish(assets, out)
    assert final.stat().st_ino == inode  # the complete final checkpoint was never rewritten (no overwrite window)
    _check_matches_reference(out, reference)


def test_damaged_checkpoints_are_skipped_and_overwrite_survives_a_kill(assets, reference, tmp_path):
    """A newest checkpoint missing a file or with a corrupt file is skipped with a warning (explicit
    path: clear error); the run re-trains over it, and a kill between the two renames of that
    same-step overwrite still leaves a resumable folder."""
    out = tmp_path / "run"
    shutil.copytree(reference["dir"], out)
    root = ckpt.checkpoints_dir(out)
    for step in range(1, MAX_STEPS + 1):
        if step not in (4, 6, 8):
            shutil.rmtree(root / f"step-{step:08d}")
    for name in ("lcm_lora.safetensors", "events.jsonl", "metrics.csv"):
        (out / name).unlink()
    (root / "step-00000008" / "optimizer.pt").unlink()  # missing file
    lora = root / "step-00000006" / "lora.safetensors"
    blob = bytearray(lora.read_bytes())
    blob[-5] ^= 0x40  # one flipped bit inside the tensor data: the safetensors header still parses
    lora.write_bytes(bytes(blob))

    with pytest.warns(ckpt.CheckpointWarning) as caught:
        picked = ckpt.resolve_resume(out, True)
    assert picked.name == "step-00000004"
    text = " ".join(str(w.message) for w in caught)
    assert "missing optimizer.pt" in text and "CRC-32" in text and "step-00000006" in text
    with pytest.raises(ckpt.CheckpointError, match="CRC-32"):
        ckpt.resolve_resume(out, root / "step-00000006")
    with pytest.raises(ckpt.CheckpointError, match="missing optimizer.pt"):
        ckpt.resolve_resume(out, "step-00000008")

    # killed after the damaged step-6 was moved aside, before the new one took its name
    rc, err = _run(assets, out, {"kind": "kill_between_renames", "nth": 1}, resume=True)
    assert rc == -signal.SIGKILL, err[-2000:]
    assert "skipping damaged checkpoint" in err
    assert ".step-00000006.replaced" in _hidden(out) and not (root / "step-00000006").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ckpt.CheckpointWarning)
        assert ckpt.resolve_resume(out, True).name == "step-00000004"

    with pytest.warns(ckpt.CheckpointWarning):
        assert _finish(assets, out).start_step == 4
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [6, 8] and _hidden(out) == []
    _check_resumable(out, reference, 8)
    _check_matches_reference(out, reference, first_step=5)


def _kill_at_random(assets, reference, tmp_path, seed, kills, anchored, span=None):
    """SIGKILL at seeded random moments (checkpoint every step, so many land in a write), resume
    after each; then finish and compare with the uninterrupted run.

    ``anchored``: wait until the child logs a random step k (after the newest checkpoint), then
    kill after a random fraction of one step + checkpoint time — the training phase, sub-step phase
    random. Otherwise: a random delay in [0, ``span``) from process creation (imports, setup,
    caching, training, export)."""
    rng = random.Random(seed)
    out = tmp_path / f"random-{seed}"
    extra = ("checkpoint.every=1",)
    moments = []
    for i in range(kills):
        done = ckpt.list_checkpoints(out)
        k = rng.randint(min((done[-1][0] if done else 0) + 1, MAX_STEPS), MAX_STEPS)
        seen = len(read_events(out))
        delay = rng.uniform(0.0, 1.0) * (reference["step_seconds"] if anchored else span)
        proc = subprocess.Popen(_args(assets, out, resume=i > 0, extra=extra), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=_env(), text=True)
        try:
            if anchored:
                deadline = time.monotonic() + 240
                while proc.poll() is None and time.monotonic() < deadline:
                    if any(e["event"] == "step" and e["step"] == k for e in read_events(out)[seen:]):
                        break
                    time.sleep(0.01)
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        err = proc.communicate(timeout=60)[1]
        assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
        listed = ckpt.list_checkpoints(out)
        where = f"after step {k} +{delay:.2f}s" if anchored else f"{delay:.2f}s"
        moments.append((where, proc.returncode, [s for s, _ in listed], _hidden(out)))
        if proc.returncode == 0:
            break
        _check_resumable(out, reference, listed[-1][0] if listed else None)
    if moments[-1][1] != 0:  # the last process was killed (maybe after the export, before its "end" event)
        _finish(assets, out, extra)
    _check_matches_reference(out, reference)
    print(f"\nseed {seed}: (kill moment, exit status, checkpoints, leftovers): {moments}")  # shown with -s
    return moments


def test_sigkill_at_random_moments(assets, reference, tmp_path):
    """Two kills at random instants of the training phase, each followed by a resume."""
    _kill_at_random(assets, reference, tmp_path, seed=0, kills=2, anchored=True)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_random_moments_in_training_long(assets, reference, tmp_path, seed):
    _kill_at_random(assets, reference, tmp_path, seed=seed, kills=6, anchored=True)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [4, 5])
def test_sigkill_at_random_moments_in_the_whole_lifetime_long(assets, reference, tmp_path, seed):
    """Six kills per seed anywhere in the process lifetime (span: a measured clean child run)."""
    start = time.monotonic()
    rc, err = _run(assets, tmp_path / "timing", extra=("checkpoint.every=1",))
    assert rc == 0, err[-2000:]
    _kill_at_random(assets, reference, tmp_path, seed=seed, kills=6, anchored=False, span=time.monotonic() - start)


def _disk_full_checks(out, reference, rc, err):
    assert rc == EXIT_ERROR, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "step-00000004" in last, err[-2000:]
    assert "no space left on device while writing checkpoint step-00000004; previous checkpoint step-00000002 kept" in last
    assert "Traceback" not in err
    assert [s for s, _ in _check_resumable(out, reference, 2)] == [2]
    assert _hidden(out) == []  # the half-written temporary folder was removed
    assert read_events(out)[-1]["status"] == "error"


def _cli_in_process(assets, out, monkeypatch, capsys, fault):
    """The trainer CLI's ``main`` in this process with the fault patched in (no start-up cost);
    returns (exit status, stderr). Same faults as the child script."""
    from lcm_lora.training import cli, lcd_step

    saves = {"n": 0}
    real_save_checkpoint, real_torch_save, real_call = ckpt.save_checkpoint, torch.save, lcd_step.LcdLoss.__call__

    def save_checkpoint(*args, **kwargs):
        saves["n"] += 1
        return real_save_checkpoint(*args, **kwargs)

    def torch_save(obj, f, *args, **kwargs):
        if saves["n"] == fault["nth"] and fault["kind"] == "enospc_mid_file":
            buf = io.BytesIO()
            real_torch_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_torch_save(obj, f, *args, **kwargs)

    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss = real_call(self, *args, **kwargs)
        return loss * float("nan") if fault["kind"] == "nan" and calls["n"] == fault["nth"] else loss

    monkeypatch.setattr(ckpt, "save_checkpoint", save_checkpoint)
    monkeypatch.setattr(torch, "save", torch_save)
    monkeypatch.setattr(lcd_step.LcdLoss, "__call__", poisoned)
    capsys.readouterr()
    rc = cli.main(_args(assets, out)[2:])
    err = capsys.readouterr().err
    monkeypatch.undo()
    return rc, err


def _run_fault(assets, out, fault, mode, monkeypatch, capsys):
    if mode == "process":
        return _run(assets, out, fault)
    return _cli_in_process(assets, out, monkeypatch, capsys, fault)


@pytest.mark.parametrize("mode", ["in-process", pytest.param("process", marks=pytest.mark.slow)])
def test_disk_full_injected(assets, reference, tmp_path, mode, monkeypatch, capsys):
    """ENOSPC half-way through optimizer.pt of the second checkpoint (CLI ``main`` in-process, or a
    real child process under ``-m slow``)."""
    out = tmp_path / "run"
    rc, err = _run_fault(assets, out, {"kind": "enospc_mid_file", "nth": 2}, mode, monkeypatch, capsys)
    _disk_full_checks(out, reference, rc, err)
    assert _finish(assets, out).start_step == 2
    _check_matches_reference(out, reference)


def test_disk_full_during_the_adapter_export(assets, reference, tmp_path, monkeypatch, capsys):
    """ENOSPC half-way through the exported adapter: one clear error (exit 2) saying the final checkpoint
    is kept; no partial adapter, no temp file; ``--resume`` exports the same adapter."""
    import safetensors.torch
    from safetensors import SafetensorError

    from lcm_lora.training import cli

    real_save_file = safetensors.torch.save_file

    def full_disk(tensors, filename, *args, **kwargs):
        if os.path.basename(filename).startswith(".lcm_lora.safetensors."):
            Path(filename).write_bytes(b"\0" * 1000)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, filename, *args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    capsys.readouterr()
    rc = cli.main(_args(assets, out)[2:])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert rc == EXIT_ERROR, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {out / 'lcm_lora.safetensors'}: ") and "No space left on device" in last
    assert "final checkpoint is kept" in last and "--resume" in last
    assert sorted(p.name for p in out.iterdir() if "lcm_lora" in p.name) == []
    _check_resumable(out, reference, MAX_STEPS)
    assert _finish(assets, out).start_step == MAX_STEPS
    _check_matches_reference(out, reference)


def _private_tmpfs_works(where: Path) -> bool:
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                               f"mount -t tmpfs -o size=1m tmpfs '{where}'"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_disk_full_on_a_real_tmpfs(assets, reference, tmp_path):
    """A real 16 MiB tmpfs (private mount namespace) filled, just before the second checkpoint,
    to leave less room than one checkpoint needs: the filesystem itself returns ENOSPC."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not shutil.which("unshare") or not _private_tmpfs_works(mnt):
        pytest.skip("SKIPPED LOUDLY: cannot mount a tmpfs in a private user+mount namespace here "
                    "(unshare missing or unprivileged user namespaces disabled); the injected-ENOSPC test still runs")
    keep = tmp_path / "kept"
    one_checkpoint = sum(f.stat().st_size for f in (reference["dir"] / "checkpoints" / "step-00000002").iterdir())
    args = " ".join(f"'{a}'" for a in _args(assets, mnt / "run", extra=("data.cache_dir=" + str(tmp_path / "cache"),)))
    script = (f"mount -t tmpfs -o size=16m tmpfs '{mnt}' && {{ {args}; rc=$?; rm -f '{mnt}/run/filler.bin'; "
              f"cp -a '{mnt}/run' '{keep}'; exit $rc; }}")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], capture_output=True,
                          text=True, env=_env({"kind": "fill_disk", "nth": 2, "leave": one_checkpoint // 2}), timeout=300)
    _disk_full_checks(keep, reference, done.returncode, done.stderr)
    overrides = _args(assets, keep)[7:] + ["data.cache_dir=" + str(tmp_path / "cache")]
    result = train(TINY, keep, resume=True, overrides=overrides, progress=False)
    assert result.start_step == 2
    _check_matches_reference(keep, reference)


@pytest.mark.parametrize("mode", ["in-process", pytest.param("process", marks=pytest.mark.slow)])
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(assets, reference, tmp_path, mode,
                                                                           monkeypatch, capsys):
    out = tmp_path / "run"
    rc, err = _run_fault(assets, out, {"kind": "nan", "nth": 5}, mode, monkeypatch, capsys)  # step 5's loss
    assert rc == EXIT_DIVERGED, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "non-finite loss" in last and "at step 5" in last and "step-00000004" in last
    assert [s for s, _ in _check_resumable(out, reference, 4)] == [2, 4]
    assert not (out / "lcm_lora.safetensors").exists()
    end = read_events(out)[-1]
    assert end["status"] == "diverged" and end["checkpoint"].endswith("step-00000004")
    assert _finish(assets, out).start_step == 4
    _check_matches_reference(out, reference)


def test_non_finite_weights_are_never_saved(tmp_path):
    """A NaN in the weights (e.g. an overflowing update after a finite loss) is refused with a clear
    error; the previous checkpoint stays the newest."""
    good = {"a": torch.ones(3)}
    ckpt.save_checkpoint(tmp_path, 1, good, {}, {}, keep=2)
    with pytest.raises(ckpt.CheckpointError, match=r"tensor a holds NaN/Inf; previous checkpoint step-00000001 kept"):
        ckpt.save_checkpoint(tmp_path, 2, {"a": torch.tensor([1.0, float("inf"), 0.0])}, {}, {}, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1] and _hidden(tmp_path) == []
    assert ckpt.verify_checkpoint(ckpt.resolve_resume(tmp_path, True)) == 1


def test_write_errors_are_one_clear_error(tmp_path, monkeypatch):
    """Disk-full signalled by safetensors' Rust writer (its own exception type and text) and an
    unrelated OSError both become CheckpointError naming the checkpoint and the kept one."""
    from safetensors import SafetensorError
    import safetensors.torch

    ckpt.save_checkpoint(tmp_path, 1, {"a": torch.ones(3)}, {}, {}, keep=2)

    def rust_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", rust_full)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.save_checkpoint(tmp_path, 2, {"a": torch.ones(3)}, {}, {}, keep=2)
    assert str(e.value).endswith("no space left on device while writing checkpoint step-00000002; "
                                 "previous checkpoint step-00000001 kept")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(safetensors.torch, "save_file", denied)
    with pytest.raises(ckpt.CheckpointError, match="cannot write .*Permission denied.* previous checkpoint step-00000001 kept"):
        ckpt.save_checkpoint(tmp_path, 2, {"a": torch.ones(3)}, {}, {}, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1] and _hidden(tmp_path) == []
