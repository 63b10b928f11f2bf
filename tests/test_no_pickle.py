"""No pickle (hardening issue, part 2): nothing in the package can unpickle, and pickle-based
adapter inputs (``.ckpt`` / ``.pt`` / ``.bin``) are refused with a clear message.

Unpickling runs code chosen by the file's author (``pickle`` docs: "never unpickle data received
from an untrusted source"); ``torch.load(weights_only=True)`` restricts it to tensors and plain
containers. The scan parses every ``.py`` of the package (``lcm_core``, ``training``, ``nodes``,
``cli``, ``demo`` and the root ``__init__.py``) with :mod:`ast` and fails on:

* ``torch.load`` / ``torch.serialization.load`` / ``torch.hub.load_state_dict_from_url`` /
  ``torch.hub.load`` without the literal keyword ``weights_only=True`` (``**kwargs`` cannot be
  checked and counts as missing);
* any ``pickle`` / ``_pickle`` / ``cPickle`` / ``dill`` / ``cloudpickle`` / ``joblib`` ``load``,
  ``loads``, ``Unpickler`` (called, imported by name, or subclassed), ``pandas.read_pickle``,
  ``shelve.open``, ``marshal.load(s)``, ``torch.jit.load``;
* ``numpy.load`` with ``allow_pickle`` not literally ``False``-or-absent.

Aliases are followed (``import torch as T``, ``from torch import load as tl``,
``from pickle import loads``). The scanner is itself tested on snippets that must and must not
be flagged, so a scanner that finds nothing cannot pass.
"""
from __future__ import annotations

import ast
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcm_lora.lcm_core.errors import AdapterFileError
from lcm_lora.lcm_core.lora import read_adapter

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("lcm_core", "training", "nodes", "cli", "demo")

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib"}
PICKLE_FUNCS = {"load", "loads", "Unpickler", "_load", "_loads"}
TORCH_LOADERS = {("torch", "load"), ("torch.serialization", "load"), ("torch.hub", "load_state_dict_from_url"),
                 ("torch.hub", "load")}
ALWAYS_BAD = {("pandas", "read_pickle"), ("shelve", "open"), ("marshal", "load"), ("marshal", "loads"),
              ("torch.jit", "load"), ("numpy", "load_pickle")}


class PickleScanner(ast.NodeVisitor):
    """Collects ``(line, description)`` of every unpickling call site in one module."""

    def __init__(self):
        self.modules: dict[str, str] = {}  # local name -> module path ("T" -> "torch")
        self.functions: dict[str, tuple[str, str]] = {}  # local name -> (module, attr)
        self.found: list[tuple[int, str]] = []

    # imports ---------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.modules[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        for a in node.names:
            local = a.asname or a.name
            self.functions[local] = (mod, a.name)
            self.modules.setdefault(local, f"{mod}.{a.name}")  # `from torch import hub` -> hub = torch.hub
            if mod.split(".")[0] in PICKLE_MODULES and a.name in PICKLE_FUNCS:
                self.found.append((node.lineno, f"from {mod} import {a.name}"))
        self.generic_visit(node)

    # resolution ------------------------------------------------------------------------
    def _dotted(self, node) -> str | None:
        if isinstance(node, ast.Name):
            return self.modules.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    def _target(self, func) -> tuple[str, str] | None:
        if isinstance(func, ast.Name) and func.id in self.functions:
            return self.functions[func.id]
        if isinstance(func, ast.Attribute):
            base = self._dotted(func.value)
            if base is not None:
                return base, func.attr
        return None

    # checks ----------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        target = self._target(node.func)
        if target is not None:
            mod, name = target
            root = mod.split(".")[0]
            kw = {k.arg: k.value for k in node.keywords}
            if (mod, name) in TORCH_LOADERS:
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    self.found.append((node.lineno, f"{mod}.{name}(...) without weights_only=True"))
            elif root in PICKLE_MODULES and name in PICKLE_FUNCS:
                self.found.append((node.lineno, f"{mod}.{name}(...)"))
            elif (mod, name) in ALWAYS_BAD:
                self.found.append((node.lineno, f"{mod}.{name}(...) unpickles"))
            elif mod == "numpy" and name == "load":
                ap = kw.get("allow_pickle")
                if None in kw or (ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False)):
                    self.found.append((node.lineno, "numpy.load(...) with allow_pickle"))
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for b in node.bases:
            target = self._target(b) if isinstance(b, ast.Attribute) else (
                self.functions.get(b.id) if isinstance(b, ast.Name) else None)
            if target and target[0].split(".")[0] in PICKLE_MODULES and target[1] == "Unpickler":
                self.found.append((node.lineno, f"class {node.name} subclasses {target[0]}.Unpickler"))
        self.generic_visit(node)


def scan_source(source: str, filename: str = "<snippet>") -> list[tuple[int, str]]:
    scanner = PickleScanner()
    scanner.visit(ast.parse(source, filename=filename))
    return scanner.found


def package_files() -> list[Path]:
    files = [REPO / "__init__.py"]
    for d in PACKAGE_DIRS:
        files += sorted((REPO / d).rglob("*.py"))
    return [f for f in files if f.is_file() and "__pycache__" not in f.parts]


# --------------------------------------------------------------------------- the scanner itself

MUST_FLAG = {
    "torch.load plain": "import torch\nsd = torch.load(p)",
    "torch.load weights_only False": "import torch\nsd = torch.load(p, weights_only=False)",
    "torch.load weights_only variable": "import torch\nsd = torch.load(p, weights_only=flag)",
    "torch.load **kwargs": "import torch\nsd = torch.load(p, **kw)",
    "torch alias": "import torch as T\nsd = T.load(p)",
    "from torch import load": "from torch import load as tl\nsd = tl(p)",
    "torch.serialization.load": "import torch.serialization\nsd = torch.serialization.load(p)",
    "torch.hub url": "import torch\nsd = torch.hub.load_state_dict_from_url(u)",
    "torch.jit.load": "import torch\nm = torch.jit.load(p)",
    "pickle.load": "import pickle\nx = pickle.load(f)",
    "pickle.loads": "import pickle as pk\nx = pk.loads(b)",
    "from pickle import loads": "from pickle import loads\nx = loads(b)",
    "Unpickler subclass": "import pickle\nclass U(pickle.Unpickler):\n    pass",
    "from pickle import Unpickler": "from pickle import Unpickler\nclass U(Unpickler):\n    pass",
    "_pickle": "import _pickle\nx = _pickle.loads(b)",
    "dill": "import dill\nx = dill.load(f)",
    "joblib": "import joblib\nx = joblib.load(p)",
    "numpy allow_pickle": "import numpy as np\nx = np.load(p, allow_pickle=True)",
    "pandas": "import pandas as pd\nx = pd.read_pickle(p)",
    "shelve": "import shelve\nd = shelve.open(p)",
    "inside a function": "def f(p):\n    import torch\n    return torch.load(p, map_location='cpu')",
}
MUST_PASS = {
    "weights_only": "import torch\nsd = torch.load(p, map_location='cpu', weights_only=True)",
    "alias weights_only": "import torch as T\nsd = T.load(p, weights_only=True)",
    "pickle.dumps": "import pickle\nb = pickle.dumps(x)",
    "json.load": "import json\nx = json.load(f)",
    "safetensors": "from safetensors.torch import load_file\nsd = load_file(p)",
    "state dict": "model.load_state_dict(sd)\nopt.load_state_dict(o)",
    "numpy plain": "import numpy as np\nx = np.load(p)",
    "numpy allow_pickle False": "import numpy as np\nx = np.load(p, allow_pickle=False)",
    "own load method": "class A:\n    def load(self, p):\n        return self.load(p)",
}


@pytest.mark.parametrize("name", sorted(MUST_FLAG))
def test_scanner_flags(name):
    assert scan_source(MUST_FLAG[name]), f"scanner misses: {name}"


@pytest.mark.parametrize("name", sorted(MUST_PASS))
def test_scanner_passes(name):
    assert scan_source(MUST_PASS[name]) == [], f"scanner false positive: {name}"


# --------------------------------------------------------------------------- the package


def test_package_never_unpickles():
    files = package_files()
    assert len(files) > 20 and any(f.name == "safetensors_io.py" for f in files)  # the scan sees the package
    findings = []
    for f in files:
        for line, what in scan_source(f.read_text(encoding="utf-8"), str(f)):
            findings.append(f"{f.relative_to(REPO)}:{line}: {what}")
    assert not findings, "unsafe deserialisation in the package:\n" + "\n".join(findings)


# --------------------------------------------------------------------------- pickle-based inputs


class _Exploit:
    """Unpickling this creates ``marker`` (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _torch_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    state = {"lora_unet_x.lora_down.weight": torch.zeros(2, 4), "evil": _Exploit(marker)}
    out = {}
    for suffix in (".ckpt", ".pt", ".bin", ".pth"):
        p = tmp_path / f"adapter{suffix}"
        torch.save(state, p)  # zip container (torch >= 1.6)
        out[f"zip{suffix}"] = p
    legacy = tmp_path / "legacy.pt"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    out["legacy pickle"] = legacy
    renamed = tmp_path / "disguised.safetensors"  # a pickle that pretends to be safetensors
    renamed.write_bytes((tmp_path / "adapter.ckpt").read_bytes())
    out["disguised"] = renamed
    assert not marker.exists()
    return out


def test_pickle_checkpoints_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "PWNED"
    files = _torch_files(tmp_path, marker)
    # the files really are hostile: a full unpickle runs the payload (our own, harmless one)
    torch.load(files["zip.pt"], weights_only=False)
    assert marker.exists()
    marker.unlink()
    for label, path in files.items():
        with pytest.raises(AdapterFileError) as info:
            read_adapter(path)
        msg = str(info.value)
        assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
        assert "pickle" in msg and "safetensors" in msg, f"{label}: {msg}"
        assert not marker.exists(), f"{label}: reading ran the pickle payload"


def test_pickle_only_adapter_folders_are_refused(tmp_path):
    marker = tmp_path / "PWNED"
    state = {"base_model.model.x.lora_A.weight": torch.zeros(2, 4), "evil": _Exploit(marker)}
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    torch.save(state, peft / "adapter_model.bin")  # peft's save_pretrained(safe_serialization=False)
    diffusers = tmp_path / "diffusers"
    diffusers.mkdir()
    torch.save(state, diffusers / "pytorch_lora_weights.bin")  # diffusers save_lora_weights(safe_serialization=False)
    for folder, name in ((peft, "adapter_model.bin"), (diffusers, "pytorch_lora_weights.bin")):
        with pytest.raises(AdapterFileError) as info:
            read_adapter(folder)
        msg = str(info.value)
        assert msg.startswith(f"{folder}: ") and name in msg and "pickle" in msg, msg
    assert not marker.exists()


def test_cli_refuses_a_checkpoint_in_one_line(tmp_path):
    marker = tmp_path / "PWNED"
    path = _torch_files(tmp_path, marker)["zip.ckpt"]
    script = Path(sys.executable).with_name("lcm-lora")
    proc = subprocess.run([str(script), "inspect", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {path}: ") and "pickle" in proc.stderr
    assert not marker.exists()


def test_sniffing_never_rejects_valid_safetensors(tmp_path):
    """A real safetensors file whose length bytes look like a pickle/zip header still loads."""
    from safetensors.torch import save_file

    for target_low_bytes in (b"\x80\x02", b"\x80\x05"):
        want = int.from_bytes(target_low_bytes, "little")  # header length ≡ this (mod 65536)
        path = tmp_path / f"x{want}.safetensors"
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(1)}, path, metadata={"p": ""})
        raw = path.read_bytes()
        json_len = len(raw[8: 8 + struct.unpack("<Q", raw[:8])[0]].rstrip(b" "))  # the writer pads with spaces
        pad = want - json_len  # `want` is a multiple of 8: no alignment padding is added
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(1)}, path, metadata={"p": "x" * pad})
        head = path.read_bytes()[:2]
        assert head == target_low_bytes
        from lcm_lora.lcm_core.safetensors_io import read_safetensors

        tensors, md = read_safetensors(path)
        assert md["p"] == "x" * pad and set(tensors) == {"lora_unet_x.lora_down.weight"}
