"""`lcm-lora demo` argument handling (the full run is exercised by tests/test_demo_claims.py, slow)."""
import argparse

import pytest

from lcm_lora.demo.cli import add_demo_parser, run_demo
from lcm_lora.demo.run import PRESETS


def _parse(argv):
    parser = argparse.ArgumentParser(prog="lcm-lora")
    add_demo_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_parser_defaults_and_options():
    a = _parse(["demo"])
    assert a.func is run_demo and a.out == "demo_out" and not a.fast and a.cache_dir is None
    a = _parse(["demo", "--out", "x", "--fast", "--cache-dir", "c", "--samples", "50", "--threads", "2", "--quiet"])
    assert (a.out, a.fast, a.cache_dir, a.samples, a.threads, a.quiet) == ("x", True, "c", 50, 2, True)
    assert _parse(["demo"]).jobs is None and _parse(["demo", "--jobs", "1"]).jobs == 1  # None: 2 with 2+ cores
    with pytest.raises(SystemExit):
        _parse(["demo", "--jobs", "3"])


@pytest.mark.parametrize("argv, message", [
    (["--samples", "5"], "--samples: need at least 20"),
    (["--threads", "0"], "--threads: must be >= 1"),
    (["--seed", "-1"], "--seed: must be between 0 and 18446744073709551609"),
    (["--seed", str(2 ** 64 - 1)], "--seed: must be between 0 and"),  # seed + 6 would overflow a torch generator
    (["--export", ""], "--export: give the folder"),
])
def test_bad_arguments_exit_2_with_a_clear_message(tmp_path, capsys, argv, message):
    args = _parse(["demo", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), *argv])
    assert run_demo(args) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_through_the_project_cli(tmp_path, capsys):
    from lcm_lora.cli.main import main

    assert main(["demo", "--out", str(tmp_path / "o"), "--samples", "3"]) == 2
    assert "--samples" in capsys.readouterr().err


def test_presets_fit_their_promises():
    full, fast = PRESETS["full"], PRESETS["fast"]
    assert full.teacher_steps == (1, 2, 4, 8, 16, 32) and full.lcm_steps == (1, 2, 4, 8)
    assert set(full.samplers) == {"ddim", "euler", "dpmpp_2m"}
    assert (full.lambda1, full.lambda2) == (0.8, 1.0)
    assert fast.n_samples < full.n_samples and 4 in fast.teacher_steps and 4 in fast.lcm_steps
    # issue 13: TCD rows at 1/2/4/8/16 steps (γ 0.3) and a γ sweep 0/0.3/0.5 at 4 steps, in both presets
    for p in (full, fast):
        assert p.tcd_steps == (1, 2, 4, 8, 16) and p.tcd_gamma == 0.3
        assert p.tcd_gammas == (0.0, 0.3, 0.5) and p.tcd_gamma_steps == 4
        assert "lcd.objective=tcd" in p.tcd_overrides


def test_paths_that_are_files_are_one_line_errors(tmp_path, capsys):
    """--out / --cache-dir naming a file, --export under a file: one error line, exit 2 (they were tracebacks)."""
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for argv in (["--out", str(a_file), "--cache-dir", str(tmp_path / "c")],
                 ["--out", str(tmp_path / "o"), "--cache-dir", str(a_file)],
                 ["--export", str(a_file / "sub")]):
        assert run_demo(_parse(["demo", "--samples", "20", "--jobs", "1", *argv])) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "afile" in err[0], (argv, err)


def test_an_import_error_of_the_package_itself_is_not_blamed_on_the_extra(monkeypatch):
    """Only a missing third-party package means "install the demo extra"; a broken import inside the package is
    raised (its traceback is what a bug report needs)."""
    import lcm_lora.demo.run as run_module

    def broken(*a, **k):
        raise ImportError("cannot import name 'X' from 'lcm_lora.lcm_core.lora'", name="lcm_lora.lcm_core.lora")

    monkeypatch.setattr(run_module, "run_demo_pipeline", broken)
    with pytest.raises(ImportError, match="cannot import name 'X'"):
        run_demo(_parse(["demo", "--jobs", "1"]))

    def missing(*a, **k):
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")

    monkeypatch.setattr(run_module, "run_demo_pipeline", missing)
    assert run_demo(_parse(["demo", "--jobs", "1"])) == 2
