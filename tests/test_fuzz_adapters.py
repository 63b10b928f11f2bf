"""Robustness of adapter reading against malformed files (hardening issue, part 1): library + CLI.

Users load LoRA files from strangers into a long-running ComfyUI server, so every malformed
file must give *our* error — an :class:`LcmLoraError` whose one-line message starts with the
file's path — within a time bound and bounded memory, and never any other exception, hang,
crash or partial output. Inputs come from :mod:`fuzz_adapter_cases` (hypothesis strategies
over container defects and LoRA defects, plus hand-made cases for every problem the issue
names); the defect is present by construction, which is the independent oracle here. Inputs
that may legitimately be valid (random byte flips, random names, metadata noise) may be
accepted, but then the safetensors library itself must accept the container too.

Per case: wall time < ``TIME_BOUND_S``; peak RSS growth < ``RSS_BOUND``; address space capped
at ``ADDRESS_SPACE_HEADROOM`` above the current size while reading (on Linux), so a reader that
allocates what a header *declares* (terabytes) fails instead of passing by overcommit.

Default run: deterministic (``derandomize``) and ≥ 1000 cases in all. ``LCM_LORA_FUZZ_SCALE=20``
multiplies the example counts and draws fresh random cases (long fuzzing run);
``LCM_LORA_FUZZ_REPORT=path.jsonl`` appends per-test case counts by kind (RELIABILITY.md).
"""
from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from fuzz_adapter_cases import (
    CHECKPOINT_SD1,
    CONTAINER_DEFECTS,
    LORA_DEFECTS,
    SD1,
    SDXL,
    Base,
    Case,
    byte_flips,
    handmade_cases,
    malformed_containers,
    malformed_loras,
    malformed_peft_folders,
    metadata_noise,
    random_name_loras,
)
from lcm_lora.cli.main import main as cli_main
from lcm_lora.lcm_core.errors import LcmLoraError
from lcm_lora.lcm_core.lora import read_adapter

TIME_BOUND_S = 2.0  # behavioural bound (a hang or a quadratic blow-up), not a benchmark
HANG_TIMEOUT_S = 60.0  # past this a case is hung: the watchdog ends the test run with tracebacks
RSS_BOUND = 64 * 2**20  # peak resident memory growth allowed per case
ADDRESS_SPACE_HEADROOM = 1 * 2**30  # virtual memory the reader may add while reading one file
SUBPROCESS_ADDRESS_SPACE = 3 * 2**30  # RLIMIT_AS of the real `lcm-lora` processes
SCALE = float(os.environ.get("LCM_LORA_FUZZ_SCALE", "1"))
REPORT = os.environ.get("LCM_LORA_FUZZ_REPORT")


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None, derandomize=SCALE == 1,
                    suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate, Phase.shrink))


def report(test: str, counts: Counter) -> None:
    if REPORT:
        with open(REPORT, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": test, "cases": sum(counts.values()), "by_kind": dict(sorted(counts.items()))}) + "\n")


# --------------------------------------------------------------------------- bounds


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _vm_size() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def bounded_address_space(headroom: int = ADDRESS_SPACE_HEADROOM):
    """Lower the soft RLIMIT_AS to (current size + headroom) for the duration; restore after."""
    vm = _vm_size()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if vm is None:
        yield
        return
    limit = vm + headroom if hard == resource.RLIM_INFINITY else min(hard, vm + headroom)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def names_first(msg: str, path: Path) -> bool:
    """``<path>: problem`` (or ``<path>/<file inside the folder>: problem`` for peft folders)."""
    return msg.startswith(f"{path}: ") or (path.is_dir() and msg.startswith(f"{path}{os.sep}") and ": " in msg)


def assert_our_error(error: LcmLoraError, path: Path) -> None:
    msg = str(error)
    assert "\n" not in msg and "\r" not in msg, f"error message is not one line: {msg!r}"
    assert names_first(msg, path), f"error does not name the file first: {msg!r}"
    assert error.problem and error.problem.strip(), msg


def library_accepts(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                f.get_tensor(k)
    except Exception:  # noqa: BLE001 - any refusal counts
        return False
    return True


WATCHDOG_FD: list[int] = []  # un-captured stderr (set by the `work` fixture)


@contextlib.contextmanager
def hang_watchdog(what: str, seconds: float = HANG_TIMEOUT_S):
    """A hang inside C code (regex engine, JSON scanner) cannot be interrupted in-process: after
    ``seconds`` dump every thread's traceback to the real stderr and end the test process — a loud
    failure instead of a CI job that never finishes."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=WATCHDOG_FD[0] if WATCHDOG_FD else sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def read_bounded(path: Path, case: Case):
    """read_adapter under the time/memory bounds; returns the adapter or our error."""
    rss0 = peak_rss()
    t0 = time.perf_counter()
    with bounded_address_space(), hang_watchdog(case.kind):
        try:
            result = read_adapter(path, expected_arch=case.expected_arch)
        except LcmLoraError as e:
            result = e
    elapsed = time.perf_counter() - t0
    grown = peak_rss() - rss0
    assert elapsed < TIME_BOUND_S, f"{case.kind} ({case.note}): {elapsed:.2f}s"
    assert grown < RSS_BOUND, f"{case.kind} ({case.note}): peak RSS grew by {grown / 2**20:.0f} MiB"
    return result


def check_library_case(path: Path, case: Case) -> None:
    result = read_bounded(path, case)
    if isinstance(result, LcmLoraError):
        assert_our_error(result, path)
        return
    assert not case.strict, f"{case.kind} ({case.note}) was accepted: {len(result)} modules"
    if path.is_file():  # we accepted it: the reference reader must accept the container too
        assert library_accepts(path), f"{case.kind}: we accept a file the safetensors library refuses"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory, request) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    try:  # pytest keeps a copy of the real stderr for its own faulthandler: dumps there are seen
        from _pytest.faulthandler import fault_handler_stderr_fd_key

        WATCHDOG_FD[:] = [request.config.stash[fault_handler_stderr_fd_key]]
    except (ImportError, KeyError):
        WATCHDOG_FD[:] = []
    # warm up lazy state (architecture tables, imports) so per-case bounds measure the case
    for arch, fmt in (("sd1", "kohya"), ("sd1", "diffusers"), ("sdxl", "kohya")):
        base = Base(arch, fmt, dict(SD1 if arch == "sd1" else SDXL), 2, None, torch.float32, 0)
        p = d / f"warm-{arch}-{fmt}.safetensors"
        save_file(base.state_dict(), p)
        read_adapter(p)
        p.unlink()
    return d


class Files:
    """Unique file names (some with spaces, non-ASCII letters and a colon) in one folder."""

    NAMES = ("case {i}.safetensors", "ünïcødé-{i}.safetensors", "odd:name {i}.safetensors", "c{i}.safetensors")

    def __init__(self, folder: Path):
        self.folder = folder
        self.i = 0

    def write(self, case: Case) -> Path:
        self.i += 1
        path = self.folder / self.NAMES[self.i % len(self.NAMES)].format(i=self.i)
        if case.data is not None:
            path.write_bytes(case.data)
        else:
            path = path.with_suffix("")
            path.mkdir()
            for rel, data in case.files.items():
                (path / rel).write_bytes(data)
        return path

    @staticmethod
    def remove(path: Path) -> None:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


# --------------------------------------------------------------------------- library


def _run_library(work: Path, runs: list, name: str, must_cover=()) -> Counter:
    """``runs``: ``(strategy, n)`` pairs, each a hypothesis run of ``n`` examples."""
    files, counts = Files(work / name), Counter()
    files.folder.mkdir()

    def check(case: Case) -> None:
        counts[case.kind] += 1
        path = files.write(case)
        try:
            check_library_case(path, case)
        finally:
            Files.remove(path)

    rss_start = peak_rss()
    for strategy, n in runs:
        fuzz_settings(n)(given(case=strategy)(check))()
    assert peak_rss() - rss_start < 4 * RSS_BOUND, "memory grew across the run (leak?)"
    missing = set(must_cover) - set(counts)
    assert not missing, f"kinds never generated: {sorted(missing)}"
    report(name, counts)
    return counts


def per_kind(factory, kinds, total: int) -> list:
    """One hypothesis run per defect kind (every kind is exercised, whatever the random draws)."""
    return [(factory(kinds=(k,)), max(1, total // len(kinds))) for k in kinds]


def test_library_refuses_malformed_containers(work):
    counts = _run_library(work, per_kind(malformed_containers, tuple(CONTAINER_DEFECTS), 300), "library_containers",
                          CONTAINER_DEFECTS)
    assert sum(counts.values()) >= 288 * min(SCALE, 1)


def test_library_refuses_malformed_loras(work):
    counts = _run_library(work, per_kind(malformed_loras, tuple(LORA_DEFECTS), 400), "library_loras", LORA_DEFECTS)
    assert sum(counts.values()) >= 288 * min(SCALE, 1)


def test_library_refuses_malformed_peft_folders(work):
    _run_library(work, [(malformed_peft_folders(), 80)], "library_peft_folders")


def test_library_on_maybe_valid_inputs(work):
    """Byte flips, random module names, metadata noise: our error or a valid adapter, never worse."""
    _run_library(work, [(byte_flips(), 50), (random_name_loras(), 50), (metadata_noise(), 50)], "library_maybe_valid",
                 ("byte_flip", "random_names", "metadata_noise"))


HANDMADE = handmade_cases()


@pytest.mark.parametrize("case", HANDMADE, ids=[c.kind for c in HANDMADE])
def test_library_handmade(work, case):
    files = Files(work / f"hand-{case.kind}")
    files.folder.mkdir()
    path = files.write(case)
    check_library_case(path, case)


def test_library_special_paths(work):
    """Paths that are not regular files must not block (FIFO) or be read (devices)."""
    d = work / "special"
    d.mkdir()
    fifo = d / "pipe.safetensors"
    os.mkfifo(fifo)
    (d / "zero.safetensors").symlink_to("/dev/zero")
    (d / "broken.safetensors").symlink_to(d / "nowhere")
    (d / "folder.safetensors").mkdir()
    config_only = d / "config-only"
    config_only.mkdir()
    (config_only / "adapter_config.json").write_text('{"r": 4}')
    for name in ("pipe.safetensors", "zero.safetensors", "broken.safetensors", "folder.safetensors", "config-only",
                 "missing.safetensors"):
        result = read_bounded(d / name, Case("special"))
        assert isinstance(result, LcmLoraError), name
        assert_our_error(result, d / name)


# --------------------------------------------------------------------------- CLI (in process)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_cli_error(code: int, err: str, path: Path | None) -> str:
    assert code == 2, f"exit {code}: {err[-500:]}"
    assert "Traceback" not in err
    lines = [l for l in err.replace("\r", "\n").splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected one error line last: {err!r}"
    if path is not None:
        assert names_first(errors[0][len("error: "):], path), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def cli_env(work) -> dict:
    """A valid SD1 adapter (merge partner) and a tiny SD1 single-file checkpoint (fuse target)."""
    d = work / "cli-env"
    d.mkdir()
    good = d / "good-sd1.safetensors"
    save_file(Base("sd1", "kohya", dict(SD1), 2, 2.0, torch.float32, 11).state_dict(), good)
    ckpt = d / "sd1-tiny.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({key: torch.randn(*SD1[k], generator=g).half() for k, key in CHECKPOINT_SD1.items()}, ckpt)
    out = d / "out"
    out.mkdir()
    # the valid inputs work (so that failures below are the bad file's doing)
    for argv in (["merge", f"{good}:0.5", f"{good}:0.5", "-o", str(out / "m.safetensors")],
                 ["fuse", str(ckpt), f"{good}:1", "--arch", "sd1", "-o", str(out / "f.safetensors")]):
        code, _, err = run_cli(argv)
        assert code == 0, err
    for p in out.iterdir():
        p.unlink()
    return {"good": good, "ckpt": ckpt, "out": out}


def cli_argv(command: str, bad: Path, env: dict, fmt: str) -> tuple[list[str], Path | None]:
    out = env["out"] / ("result" if fmt == "peft" and command == "convert" else "result.safetensors")
    if command == "inspect":
        return ["inspect", str(bad)], None
    if command == "inspect-json":
        return ["inspect", "--json", str(bad)], None
    if command == "convert":
        return ["convert", str(bad), "--to", fmt, "-o", str(out)], out
    if command == "merge":
        return ["merge", f"{env['good']}:0.8", f"{bad}:1.0", "--method", "concat", "-o", str(out)], out
    return ["fuse", str(env["ckpt"]), f"{bad}:1.0", "--arch", "sd1", "-o", str(out)], out


def check_cli_case(bad: Path, case: Case, env: dict, command: str, fmt: str) -> None:
    argv, out = cli_argv(command, bad, env, fmt)
    rss0, t0 = peak_rss(), time.perf_counter()
    with bounded_address_space(), hang_watchdog(case.kind):
        code, stdout, err = run_cli(argv)
    elapsed, grown = time.perf_counter() - t0, peak_rss() - rss0
    assert elapsed < TIME_BOUND_S, f"{case.kind} via {command}: {elapsed:.2f}s"
    assert grown < RSS_BOUND, f"{case.kind} via {command}: peak RSS grew by {grown / 2**20:.0f} MiB"
    if case.strict or code != 0:
        assert_cli_error(code, err, bad if case.strict else None)
        assert not stdout.startswith("wrote"), stdout
        assert list(env["out"].iterdir()) == [], "an output (or a temporary file) was left behind"
    else:
        assert out is None or out.exists()
    for p in env["out"].iterdir():
        Files.remove(p)


def _cli_cases():
    strict = st.one_of(malformed_containers(), malformed_loras()).filter(lambda c: c.expected_arch in (None, "sd1"))
    return st.one_of(strict, strict, strict, byte_flips(), random_name_loras())


@st.composite
def cli_inputs(draw):
    case = draw(_cli_cases())
    if case.expected_arch == "sd1":  # needs an SD1 context: fuse into the SD1 checkpoint
        command = "fuse"
    else:
        command = draw(st.sampled_from(["inspect", "inspect-json", "convert", "merge", "fuse"]))
    return case, command, draw(st.sampled_from(["kohya", "diffusers", "peft", "comfy"]))


def test_cli_refuses_malformed_files_in_process(work, cli_env):
    files, counts = Files(work / "cli"), Counter()
    files.folder.mkdir()

    @fuzz_settings(200)
    @given(inp=cli_inputs())
    def run(inp) -> None:
        case, command, fmt = inp
        counts[f"{command}:{case.kind}"] += 1
        path = files.write(case)
        try:
            check_cli_case(path, case, cli_env, command, fmt)
        finally:
            Files.remove(path)

    run()
    commands = Counter(k.split(":")[0] for k in counts)
    assert set(commands) == {"inspect", "inspect-json", "convert", "merge", "fuse"}, commands
    report("cli_in_process", counts)


@pytest.mark.parametrize("command", ["inspect", "convert", "merge", "fuse"])
def test_cli_handmade(work, cli_env, command):
    files = Files(work / f"cli-hand-{command}")
    files.folder.mkdir()
    for case in HANDMADE:
        if case.expected_arch not in (None, "sd1") or (case.expected_arch and command != "fuse"):
            continue
        path = files.write(case)
        check_cli_case(path, case, cli_env, command, "kohya")


# --------------------------------------------------------------------------- CLI (real processes)


def _limit_address_space():  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (SUBPROCESS_ADDRESS_SPACE, SUBPROCESS_ADDRESS_SPACE))


def test_cli_real_processes_with_memory_limit(work, cli_env):
    """The installed ``lcm-lora`` under RLIMIT_AS: memory bombs fail cleanly, a valid file still works."""
    script = Path(sys.executable).with_name("lcm-lora")
    by_kind = {c.kind: c for c in HANDMADE}
    d = work / "subprocess"
    d.mkdir()
    jobs = {}
    for kind, command in (("memory_bomb_16GiB_tensor", "inspect"), ("other_architecture_sdxl_for_sd1", "fuse")):
        path = d / f"{kind}.safetensors"
        path.write_bytes(by_kind[kind].data)
        argv, _ = cli_argv(command, path, dict(cli_env, out=d / f"out-{kind}"), "kohya")
        (d / f"out-{kind}").mkdir()
        jobs[kind] = (path, subprocess.Popen([str(script), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True, preexec_fn=_limit_address_space))
    control = subprocess.Popen([str(script), "inspect", str(cli_env["good"])], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=_limit_address_space)
    try:
        out, err = control.communicate(timeout=300)
        assert control.returncode == 0, f"a valid file fails under the address-space limit: {err}"
        for kind, (path, proc) in jobs.items():
            _, err = proc.communicate(timeout=300)
            assert_cli_error(proc.returncode, err, path)
            assert list((d / f"out-{kind}").iterdir()) == []
    finally:
        for proc in [control, *(p for _, p in jobs.values())]:
            if proc.poll() is None:
                proc.kill()
