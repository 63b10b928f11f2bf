"""Every README command block that can run on a CPU is executed, so the README cannot drift
(issue 17, item 9).

Each fenced ``bash``/``sh`` block of ``README.md`` and ``demo/README.md`` (and each untyped block
whose first line is a command) must be preceded by a marker comment:

* ``<!-- readme-test: skip: REASON -->`` — cannot run here (installs a venv, needs ComfyUI, a GPU,
  hours); the reason is shown as the pytest skip reason;
* ``<!-- readme-test: run; replace "A" with "B"; ...; needs FILE ... -->`` (``run slow``: only with
  ``-m slow``) — executed with ``bash -e``
  in one scratch folder shared by all blocks, in README order, as a new user would run them (the
  folder has ``configs/`` of this checkout; the venv's ``bin`` is first on ``PATH``, so ``lcm-lora``
  is this checkout's CLI). ``replace`` makes sizes tiny (each must match, so a replaced text that
  disappears from the README fails); ``needs`` names what the block expects to exist, made first when
  an earlier block has not: ``X.safetensors`` (a small random SD1.5 kohya adapter) or ``DIR/``
  (``lcm-lora demo --export DIR``).

An unmarked command block fails :func:`test_every_command_block_is_marked`. The test also checks that
the CLI's output holds no traceback and none of the library noise the CLI silences, that resumed runs
really resumed, and that the README lists every environment variable the tests read.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "demo" / "README.md"]
COMMAND_LANGS = {"bash", "sh", "shell", "console"}
COMMAND_PREFIXES = ("lcm-lora", "python", ".venv/", "pip ", "torchrun", "cd ", "git ", "COMFYUI_", "LCM_", "accelerate")
NOISE = ("Traceback", "should be kept in float32: []", "Writing model shards", "BrokenPipeError")


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    text: str
    directives: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    """Fenced command blocks of a markdown file with the ``readme-test:`` comments just above them."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        text = "\n".join(lines[start + 1 : j])
        directives, k = [], start - 1
        while k >= 0 and (not lines[k].strip() or lines[k].strip().startswith("<!--")):
            hit = re.search(r"<!--\s*readme-test:\s*(.*?)\s*-->", lines[k])
            if hit:
                directives.append(hit.group(1))
            k -= 1
        first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
        env_prefixed = re.match(r"[A-Z_][A-Z0-9_]*=\S*\s", first)  # VAR=value command ...
        if lang in COMMAND_LANGS or (lang == "" and (first.startswith(COMMAND_PREFIXES) or env_prefixed)):
            blocks.append(Block(path, start + 1, lang, text, directives))
        i = j + 1
    return blocks


def parse_directive(text: str) -> dict:
    """``skip: reason`` → {"skip": reason}; ``run; replace "a" with "b"; needs x y`` → {"replace": [...], "needs": [...]}."""
    if text.startswith("skip"):
        return {"skip": text.split(":", 1)[1].strip() if ":" in text else "marked skip"}
    if not text.startswith("run"):
        raise ValueError(f"unknown readme-test directive {text!r} (use 'run; ...' or 'skip: reason')")
    out = {"replace": re.findall(r'replace "(.*?)" with "(.*?)"', text), "needs": [],
           "slow": text.split(";", 1)[0].split() == ["run", "slow"]}
    needs = re.search(r"needs\s+([^;(]+)", text)
    if needs:
        out["needs"] = needs.group(1).split()
    return out


BLOCKS = [b for doc in DOCS if doc.is_file() for b in parse_blocks(doc)]


def _param(block: Block):
    try:
        slow = bool(block.directives) and parse_directive(block.directives[0]).get("slow", False)
    except ValueError:
        slow = False
    return pytest.param(block, id=block.name, marks=[pytest.mark.slow] if slow else [])


def test_every_command_block_is_marked():
    unmarked = [b.name for b in BLOCKS if not b.directives]
    assert not unmarked, ("README command blocks without a '<!-- readme-test: run; ... -->' or "
                          f"'<!-- readme-test: skip: reason -->' marker: {unmarked}")
    for b in BLOCKS:
        for d in b.directives:
            parse_directive(d)  # raises on a malformed marker


def environment_variables_read(*sources: str) -> set[str]:
    """Names of the environment variables the ``sources`` read (``os.environ.get(X)``, ``os.getenv(X)``,
    ``os.environ[X]``), where X is a string, or a name bound to strings in them (``VAR = "..."``,
    ``A, B = "...", "..."``, a parameter given as ``name="..."`` in a call, also in another of the sources):
    ``?name`` for one it cannot resolve."""
    import ast

    trees = [ast.parse(source) for source in sources]
    strings: dict[str, set[str]] = {}

    def bind(target, value):
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant) and isinstance(value.value, str):
            strings.setdefault(target.id, set()).add(value.value)
        elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            for t, v in zip(target.elts, value.elts):
                bind(t, v)

    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                bind(target, node.value)
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg:
                    bind(ast.Name(id=kw.arg), kw.value)
    read = set()
    for node in (n for tree in trees for n in ast.walk(tree)):
        key = None
        if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "getenv" or (f.attr == "get" and isinstance(f.value, ast.Attribute) and f.value.attr == "environ"):
                key = node.args[0]
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Attribute)
              and node.value.attr == "environ"):
            key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            read.add(key.value)
        elif isinstance(key, ast.Name):
            read |= strings.get(key.id, {f"?{key.id}"})
        elif key is not None:
            read.add("?" + ast.unparse(key))
    return read


def test_environment_variable_scan_follows_names():
    src = ("import os\nA, B = 'X_ONE', 'X_TWO'\nVAR = 'X_THREE'\nos.environ.get(A); os.getenv(B); os.environ[VAR]\n"
           "def f(env):\n    return os.environ.get(env)\nf(env='X_FOUR')\nos.environ.get('X_FIVE')\nos.environ['SET'] = '1'\n"
           "os.environ.get(unknown)\n")
    assert environment_variables_read(src) == {"X_ONE", "X_TWO", "X_THREE", "X_FOUR", "X_FIVE", "?unknown"}
    assert environment_variables_read("import os\nos.environ.get(name)\n", "g(name='X_SIX')\n") == {"X_SIX"}


def test_readme_lists_every_environment_variable_the_tests_read():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    set_by_tests = {"PATH", "HOME", "OMP_WAIT_POLICY", "LCM_CRASH_FAULT", "LCM_LORA_TRAIN_PYTHON", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONUNBUFFERED"}
    read = environment_variables_read(*(path.read_text(encoding="utf-8") for path in (ROOT / "tests").rglob("*.py")))
    unresolved = sorted(v for v in read if v.startswith("?"))
    assert not unresolved, f"environment lookups whose variable the scan cannot name: {unresolved}"
    missing = sorted(v for v in read - set_by_tests if f"`{v}`" not in readme)
    assert not missing, f"README.md does not document these test variables: {missing}"


def test_skip_reasons_name_variables_not_machine_paths():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_harness_for_reasons", ROOT / "tests" / "comfy" / "comfy_harness.py")
    harness = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = harness  # its dataclasses look their module up
    spec.loader.exec_module(harness)
    saved = {k: os.environ.pop(k) for k in ("COMFYUI_PATH", "COMFYUI_PYTHON") if k in os.environ}
    try:
        reason = harness.comfy_env()  # what every in-ComfyUI test prints when it skips
    finally:
        os.environ.update(saved)
    assert isinstance(reason, str)
    assert "COMFYUI_PATH" in reason and "COMFYUI_PYTHON" in reason and "/work" not in reason
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "/work/" in line and "never printed" not in line and path.name != Path(__file__).name:
                offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert not offenders, offenders


# ------------------------------------------------------------------------------- running blocks
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    (root / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    return root


def _write_adapter(path: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    modules = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (320, 768),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (320, 320)}
    tensors = {}
    for name, (out_f, in_f) in modules.items():
        tensors[f"{name}.lora_down.weight"] = torch.randn(8, in_f, generator=g) * 0.1
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_f, 8, generator=g) * 0.1
        tensors[f"{name}.alpha"] = torch.tensor(8.0)
    save_file(tensors, path)


def _resumed_runs(script: str) -> list[str]:
    runs = []
    for line in script.splitlines():
        if "--resume" in line and "--output" in line:
            words = shlex.split(line, comments=True)
            runs.append(words[words.index("--output") + 1])
    return runs


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_readme_block_runs(block: Block, workspace: Path):
    if not block.directives:
        pytest.fail(f"{block.name}: unmarked command block (see test_every_command_block_is_marked)")
    spec = parse_directive(block.directives[0])
    if "skip" in spec:
        pytest.skip(f"{block.name}: {spec['skip']}")
    script = block.text
    for old, new in spec["replace"]:
        assert old in script, f"{block.name}: readme-test replaces {old!r}, which the block no longer contains"
        script = script.replace(old, new)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for n, name in enumerate(spec["needs"]):
        if (workspace / name).exists():
            continue  # made by an earlier block, as for a user following the README
        if name.endswith(".safetensors"):
            _write_adapter(workspace / name, seed=n)
        elif name.endswith("/"):  # the tiny teacher + data folder of `lcm-lora demo --export DIR`
            subprocess.run(["lcm-lora", "demo", "--export", name.rstrip("/")], cwd=workspace, env=env, check=True,
                           capture_output=True, timeout=600)
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{block.name} failed (status {done.returncode}):\n{script}\n---\n{output[-4000:]}"
    noise = [n for n in NOISE if n in output]
    assert not noise, f"{block.name}: output shows {noise}:\n{output[-3000:]}"
    for run in _resumed_runs(script):
        starts = [json.loads(l) for l in (workspace / run / "events.jsonl").read_text().splitlines()
                  if '"event": "start"' in l]
        assert starts and starts[-1]["resumed_from"], f"{block.name}: {run} did not resume: {starts[-1:]}"
