"""Packaging contract: one importable package `lcm_lora`, a console script, no ComfyUI imports.

References: the built wheel itself (what pip installs), `importlib.metadata`, and a fresh
interpreter's `sys.modules` after importing the library and the CLI.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NOT_PACKAGES = {"tests", "benchmarks", "scripts", "docs", "web", "configs", "example_workflows", ".ci", "build", "dist"}
BUILD_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "node_modules", "__pycache__",
                                      ".pytest_cache", ".hypothesis", "demo_out", "out")


def _package_dirs() -> set[str]:
    found = {"lcm_lora"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel == Path("."):
            continue
        if rel.parts[0] in NOT_PACKAGES or rel.parts[0].startswith(".") or "node_modules" in rel.parts:
            continue
        found.add("lcm_lora." + ".".join(rel.parts))
    return found


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert _package_dirs() == listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    # Build from a clean copy: setuptools' in-tree build/ folder would otherwise leak stale files.
    source = tmp_path_factory.mktemp("source") / "repo"
    shutil.copytree(ROOT, source, ignore=BUILD_IGNORE)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
    )
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def test_wheel_installs_one_top_level_package(wheel):
    top = {name.split("/", 1)[0] for name in wheel.namelist() if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"lcm_lora"}, f"unexpected top-level entries in the wheel: {sorted(top)}"


def test_wheel_carries_package_data_and_console_script(wheel):
    names = set(wheel.namelist())
    for required in ("lcm_lora/__init__.py", "lcm_lora/lcm_core/__init__.py", "lcm_lora/cli/main.py"):
        assert required in names
    assert any(n.startswith("lcm_lora/configs/") and n.endswith((".yaml", ".toml")) for n in names)
    assert any(n.startswith("lcm_lora/web/") and n.endswith(".js") for n in names)
    assert any(n.startswith("lcm_lora/web/docs/") and n.endswith(".md") for n in names)
    assert any(n.startswith("lcm_lora/example_workflows/") and n.endswith(".json") for n in names)
    assert "lcm_lora/demo/README.md" in names  # the demo report's "Why" links point into it
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert re.search(r"^lcm-lora\s*=\s*lcm_lora\.cli\.main:main$", text, re.M), text


def test_torch_is_pinned_only_in_the_constraints_file():
    deps = PYPROJECT["project"]["dependencies"]
    (torch_dep,) = [d for d in deps if re.match(r"torch\b", d)]
    assert "==" not in torch_dep, "ComfyUI users keep their own torch: no exact pin in pyproject"
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in constraints


def test_comfy_registry_metadata():
    comfy = PYPROJECT["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert key in comfy
    assert PYPROJECT["project"]["name"] and PYPROJECT["project"]["version"]


def test_library_and_cli_never_import_comfyui():
    code = (
        "import sys, importlib, pkgutil\n"
        "import lcm_lora.lcm_core as core, lcm_lora.cli.main, lcm_lora.training, lcm_lora.demo\n"
        "for m in pkgutil.walk_packages(core.__path__, 'lcm_lora.lcm_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "lcm_lora.cli.main.build_parser()\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('comfy', 'folder_paths', 'comfy_api', 'nodes', 'training'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_script_runs():
    script = Path(sys.executable).with_name("lcm-lora")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("inspect", "convert", "merge", "fuse", "train", "demo"):
        assert command in result.stdout


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, "README must mark its test command with <!-- test-command -->"
    test_command = match.group(1).strip()
    assert test_command in ci.splitlines(), f"{test_command!r} is not run verbatim by .ci/run"
