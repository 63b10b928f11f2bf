"""Outputs are never overwritten unless asked, never left half-written, and output names are
sanitised (hardening issue, part 5).

* CLI ``convert`` (every format, peft = a folder), ``merge`` and ``fuse`` refuse an existing
  target without ``--force`` (one-line error, target byte-for-byte unchanged) and replace it
  with ``--force``.
* A write that fails midway (disk full, raised from inside the safetensors writer after half
  the bytes) or a process killed (SIGKILL) mid-write leaves the target as it was: absent, or
  the old contents; an exception leaves no temporary file either.
* :mod:`lcm_core.safe_names`: properties checked on arbitrary text with hypothesis against
  independent references — :mod:`pathlib`'s POSIX and Windows path flavours (one component,
  ``PureWindowsPath.is_reserved``) and the real file system (the file is created inside the
  folder).
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from fuzz_adapter_cases import CHECKPOINT_SD1, SD1, Base
from lcm_lora.cli.main import main as cli_main
from lcm_lora.lcm_core.errors import ConfigError, LcmLoraError
from lcm_lora.lcm_core.lora import read_adapter, write_adapter
from lcm_lora.lcm_core.safe_names import (
    MAX_NAME_BYTES,
    WINDOWS_RESERVED,
    safe_output_path,
    safe_relative_path,
    sanitize_filename,
)

SENTINEL = b"precious bytes that must survive\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("safe-out-inputs")
    good = d / "good.safetensors"
    save_file(Base("sd1", "kohya", dict(SD1), 2, 2.0, torch.float32, 3).state_dict(), good)
    ckpt = d / "ckpt.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({key: torch.randn(*SD1[k], generator=g).half() for k, key in CHECKPOINT_SD1.items()}, ckpt)
    return {"good": good, "ckpt": ckpt}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


COMMANDS = {
    "convert-kohya": lambda i, o: ["convert", i["good"], "--to", "kohya", "-o", o],
    "convert-diffusers": lambda i, o: ["convert", i["good"], "--to", "diffusers", "-o", o],
    "convert-comfy": lambda i, o: ["convert", i["good"], "--to", "comfy", "-o", o],
    "convert-peft": lambda i, o: ["convert", i["good"], "--to", "peft", "-o", o],
    "merge": lambda i, o: ["merge", f"{i['good']}:0.5", f"{i['good']}:0.5", "-o", o],
    "fuse": lambda i, o: ["fuse", i["ckpt"], f"{i['good']}:1", "--arch", "sd1", "-o", o],
}


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _make_existing(target: Path, as_folder: bool) -> None:
    if as_folder:
        target.mkdir()
        (target / "adapter_model.safetensors").write_bytes(SENTINEL)
    else:
        target.write_bytes(SENTINEL)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_never_overwrites_without_force(capsys, tmp_path, inputs, command):
    folder_output = command == "convert-peft"
    target = tmp_path / ("out" if folder_output else "out.safetensors")
    _make_existing(target, folder_output)
    before = _snapshot(tmp_path)
    code, out, err = run_cli(capsys, *COMMANDS[command](inputs, target))
    lines = [l for l in err.replace("\r", "\n").splitlines() if l.strip()]  # (merge shows progress first)
    errors = [l for l in lines if l.startswith("error: ")]
    assert code == 2 and errors == lines[-1:] and errors[0].startswith(f"error: {target}: ") and "--force" in err, err
    assert _snapshot(tmp_path) == before, "the existing output (or its folder) changed"
    code, out, err = run_cli(capsys, *COMMANDS[command](inputs, target), "--force")
    assert code == 0, err
    weights = sorted(target.rglob("adapter_model.safetensors")) if folder_output else [target]
    assert weights, "no adapter_model.safetensors written"
    for w in weights:
        with safe_open(str(w), framework="pt") as f:  # the reference reader accepts the new output
            assert len(list(f.keys())) > 0
        assert w.read_bytes() != SENTINEL
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"


# --------------------------------------------------------------------------- failures mid-write


def _disk_full_after_half(monkeypatch):
    """Make the safetensors writer write half of its bytes, then fail with ENOSPC."""
    import safetensors.torch as stt

    real = stt.save_file

    def half_then_fail(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(stt, "save_file", half_then_fail)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers", "comfy", "peft"])
@pytest.mark.parametrize("existing", [False, True])
def test_exception_mid_write_leaves_target_untouched(monkeypatch, tmp_path, inputs, fmt, existing):
    adapter = read_adapter(inputs["good"])
    target = tmp_path / ("out" if fmt == "peft" else "out.safetensors")
    if existing:
        _make_existing(target, fmt == "peft")
    before = _snapshot(tmp_path)
    _disk_full_after_half(monkeypatch)
    with pytest.raises(LcmLoraError) as info:
        write_adapter(adapter, target, format=fmt, overwrite=existing)
    msg = str(info.value)
    assert msg.startswith(f"{target}") and "No space left on device" in msg and "\n" not in msg, msg
    assert _snapshot(tmp_path) == before, "a partial output or a temporary file was left behind"


def test_cli_disk_full_is_one_line(monkeypatch, capsys, tmp_path, inputs):
    _disk_full_after_half(monkeypatch)
    target = tmp_path / "out.safetensors"
    code, _, err = run_cli(capsys, "convert", inputs["good"], "--to", "kohya", "-o", target)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {target}: cannot write"), err
    assert list(tmp_path.iterdir()) == []


KILL_CHILD = r"""
import sys, time
import safetensors.torch as stt
real = stt.save_file
def half_then_hang(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    data = open(filename, "rb").read()
    with open(filename, "wb") as f:
        f.write(data[: len(data) // 2])
    print("WRITING", filename, flush=True)
    time.sleep(600)
stt.save_file = half_then_hang
from lcm_lora.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_mid_write_leaves_target_untouched(tmp_path, inputs):
    """SIGKILL while the output is half written: the target is the old file (or absent)."""
    cases = {
        "overwrite-file": (tmp_path / "a" / "out.safetensors", ["--to", "kohya", "--force"], True),
        "new-file": (tmp_path / "b" / "out.safetensors", ["--to", "diffusers"], False),
        "new-peft-folder": (tmp_path / "c" / "out", ["--to", "peft"], False),
    }
    procs = {}
    for name, (target, args, existing) in cases.items():
        target.parent.mkdir()
        if existing:
            target.write_bytes(SENTINEL)
        procs[name] = subprocess.Popen([sys.executable, "-c", KILL_CHILD, "convert", str(inputs["good"]), "-o",
                                        str(target), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for name, proc in procs.items():
            line = proc.stdout.readline()  # blocks until the child is mid-write (or exits)
            assert line.startswith("WRITING"), f"{name}: child did not reach the write: {proc.stderr.read()[-2000:]}"
            tmp = Path(line.split(" ", 1)[1].strip())
            assert tmp.exists() and tmp != cases[name][0], f"{name}: writes in place instead of a temporary file"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            target, _, existing = cases[name]
            if existing:
                assert target.read_bytes() == SENTINEL, f"{name}: the old output was damaged"
            else:
                assert not target.exists(), f"{name}: a partial output exists at the target"
            # what may remain is a hidden temporary sibling, never something at the target's name
            assert all(p.name.startswith(".") for p in target.parent.iterdir() if p != target), \
                sorted(p.name for p in target.parent.iterdir())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- file names

NAMES = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))
HOSTILE = st.text(alphabet=st.one_of(
    st.characters(codec="utf-8"),  # anything encodable, incl. controls and bidi overrides
    st.sampled_from(list("/\\:.*?<>|\"\x00\n\r\t \u202e\u200b\ufeff\u2028")),
), max_size=300) | st.sampled_from(["..", ".", "../..", "/etc/passwd", "C:\\Windows\\x", "\\\\srv\\share\\x", "CON",
                                    "nul.safetensors", "Com1.txt", "LPT9", "aux ", "con .txt", " . ", "\x00", "x" * 400,
                                    "é" * 200 + ".safetensors", "a\udcff.safetensors"])
UNSAFE_CHARS = set("/\\:<>\"|?*")


def _is_invisible(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")


def _windows_reserved(name: str) -> bool:
    check = getattr(os.path, "isreserved", None)  # Python ≥ 3.13 (ntpath)
    if check is not None and os.name == "nt":
        return check(name)
    return PureWindowsPath(name).is_reserved()


@NAMES
@given(name=HOSTILE)
def test_sanitize_filename_properties(name, tmp_path_factory):
    try:
        out = sanitize_filename(name)
    except ConfigError as e:  # only when nothing usable is left
        assert "\n" not in str(e)
        usable = [c for c in name if not _is_invisible(c) and c not in UNSAFE_CHARS and not c.isspace() and c != "."]
        assert not usable, f"{name!r} was refused although it has usable characters"
        return
    assert out and out not in (".", "..") and not out.startswith(".") and out == out.strip()
    assert not UNSAFE_CHARS & set(out) and not any(_is_invisible(c) for c in out), repr(out)
    assert len(out.encode("utf-8")) <= MAX_NAME_BYTES
    assert PurePosixPath(out).name == out and PureWindowsPath(out).name == out  # one component everywhere
    assert not _windows_reserved(out), out
    assert not out.endswith((".", " "))
    assert sanitize_filename(out) == out  # idempotent
    folder = tmp_path_factory.mktemp("names")
    created = folder / out
    created.write_bytes(b"x")  # a real file system accepts it, inside the folder
    assert [p.name for p in folder.iterdir()] == [out] and created.resolve().parent == folder.resolve()


@NAMES
@given(name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 _\-]{0,40}[A-Za-z0-9_\-](\.[a-z]{1,11})?", fullmatch=True))
def test_benign_names_are_unchanged(name):
    if _windows_reserved(name) or name.split(".")[0].upper() in WINDOWS_RESERVED:  # COM0/LPT0: newer Windows
        assert sanitize_filename(name) != name
    else:
        assert sanitize_filename(name) == name


def test_long_names_keep_their_extension(tmp_path):
    out = sanitize_filename("ü" * 400 + ".safetensors")
    assert out.endswith(".safetensors") and len(out.encode("utf-8")) <= MAX_NAME_BYTES
    # the atomic write's temporary sibling ".<name>.XXXXXXXX.tmp" fits the file system's 255 bytes too
    from lcm_lora.lcm_core.atomic_write import atomic_file

    for name in (out, sanitize_filename("b" * 400)):
        with atomic_file(tmp_path / name) as tmp:
            assert len(tmp.name.encode("utf-8")) <= 255
            tmp.write_bytes(b"x")
        assert (tmp_path / name).read_bytes() == b"x"
    rel = safe_relative_path("x" * 1000, suffix=".safetensors")
    assert rel.endswith(".safetensors") and len(rel.encode("utf-8")) <= MAX_NAME_BYTES


COMPONENT = st.sampled_from(["..", ".", "", "a", "b c", "CON", "C:", "~", " .. ", "x.safetensors"]) | HOSTILE


@NAMES
@given(parts=st.lists(COMPONENT, min_size=1, max_size=5), sep=st.sampled_from(["/", "\\"]),
       lead=st.sampled_from(["", "/", "\\", "C:\\", "\\\\server\\"]))
def test_safe_output_path_stays_inside_root(parts, sep, lead, tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    name = lead + sep.join(parts)
    try:
        path = safe_output_path(root, name, suffix=".safetensors")
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert lead == "", f"absolute {name!r} accepted"
    assert not any(p.strip() == ".." for p in name.replace("\\", "/").split("/")), f"'..' in {name!r} accepted"
    assert os.path.commonpath([root.resolve(), path]) == str(root.resolve()) and path != root.resolve()
    assert path.name.endswith(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")  # creatable, and inside the root
    assert path.resolve().is_relative_to(root.resolve())


def test_symlink_out_of_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "loras", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError, match="outside the output folder"):
        safe_output_path(root, "link/evil", suffix=".safetensors")
    assert safe_output_path(root, "sub/ok", suffix=".safetensors") == root.resolve() / "sub" / "ok.safetensors"
    with pytest.raises(ConfigError, match="folders"):
        safe_relative_path("sub/ok", allow_subfolders=False)
