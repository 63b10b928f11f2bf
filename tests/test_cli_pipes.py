"""Command-line rough edges (issue 17, items 4, 5, 9): output cut short by the reader ends quietly
(no BrokenPipeError traceback) for every sub-command, ``--debug`` works before or after the
sub-command, and library noise is silenced unless ``--debug``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lcm_lora.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "lcm_lora.cli.main"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("pipes") / "style.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{name}.lora_down.weight": torch.randn(4, 768, generator=g),
               f"{name}.lora_up.weight": torch.randn(320, 4, generator=g)}, path, metadata={"note": "x" * 200})
    return path


def _run_into_closed_pipe(argv: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI with stdout a real pipe whose reader has already gone (what `| head -1` leaves)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()  # the reader exits before the first write: every write raises EPIPE
    _, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, proc.returncode, None, err.decode())


@pytest.mark.parametrize("args", [
    ["inspect", "{adapter}"],
    ["merge", "{adapter}:0.5", "{adapter}:0.5", "--method", "svd", "--rank", "2", "-o", "{out}/m.safetensors", "--json"],
    ["train", "--print-schema"],
    ["--help"],
], ids=["inspect", "merge", "train-schema", "help"])
def test_broken_pipe_ends_quietly(args, adapter, tmp_path):
    argv = CLI + [a.format(adapter=adapter, out=tmp_path) for a in args]
    done = _run_into_closed_pipe(argv)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode in (0, 141), (done.returncode, done.stderr)  # 141 = 128 + SIGPIPE, like cat/grep


def test_shell_pipe_into_head(adapter, tmp_path):
    """The issue's command line, verbatim: `lcm-lora inspect X | head -1` (pipefail shows our status)."""
    script = f"set -o pipefail; {' '.join(CLI)} train --print-schema | head -1; echo status=$?"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# lcm-lora train") and lines[-1] in ("status=0", "status=141")
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("position", ["before", "after"])
def test_debug_before_or_after_the_subcommand(position, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 5)
    args = ["inspect", str(bad)]
    argv = ["--debug", *args] if position == "before" else [*args, "--debug"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith(f"error: {bad}")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["convert", "merge", "fuse", "train", "demo"])
def test_every_subcommand_accepts_debug_after_it(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help", "--debug"])
    assert e.value.code == 0
    assert "--debug" in capsys.readouterr().out


def test_library_noise_is_silenced_and_kept_with_debug():
    """diffusers' 'should be kept in float32: []' (logged on every model cast) is dropped by the CLI's
    filter unless --debug; real warnings of the same logger still pass."""
    import logging

    from lcm_lora.lcm_core.quiet_libraries import quiet_libraries

    logger = logging.getLogger("diffusers.models.modeling_utils")
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    old_filters = list(logger.filters)
    try:
        quiet_libraries(debug=False)
        logger.warning("There are modules in UNet2DConditionModel that should be kept in float32: []. Casting")
        logger.warning("There are modules in X that should be kept in float32: ['norm']. Casting")
        assert records == ["There are modules in X that should be kept in float32: ['norm']. Casting"]
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = old_filters
