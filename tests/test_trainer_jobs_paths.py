"""Trainer-panel request checks without ComfyUI: name confinement, request typing, publishing.

``nodes/trainer_jobs.py`` imports nothing from ComfyUI (its folders come in a ``ComfyFolders``),
but ``lcm_lora.nodes`` itself does, so the module is loaded on its own here. The references are
the file system itself (``os.path.realpath``) and the trainer's own config parser
(``training.config.parse_override`` / ``load_config``), which must read back every override the
panel writes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    import lcm_lora  # noqa: F401  (parent package for the relative imports)

    spec = importlib.util.spec_from_file_location("lcm_lora.nodes.trainer_jobs", ROOT / "nodes" / "trainer_jobs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]  # lcm_lora.nodes itself needs ComfyUI: leave no half-package behind
    return module


TJ = _load()


@pytest.fixture
def tree(tmp_path):
    """root/{a.safetensors, sub/b.ckpt, model/unet/config.json, link_in -> a, link_out -> outside, dir_out -> outside/}"""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "model" / "unet").mkdir(parents=True)
    (root / "model" / "unet" / "config.json").write_text("{}")
    outside.mkdir()
    (outside / "secret.safetensors").write_bytes(b"x")
    (root / "a.safetensors").write_bytes(b"a")
    (root / "sub" / "b.ckpt").write_bytes(b"b")
    os.symlink(root / "a.safetensors", root / "link_in.safetensors")
    os.symlink(outside / "secret.safetensors", root / "link_out.safetensors")
    os.symlink(outside, root / "dir_out")
    return root, outside


@pytest.mark.parametrize("name,fragment", [
    ("../x", "'..'"), ("a/../../x", "'..'"), ("..\\x", "'..'"), ("/etc/passwd", "absolute"), ("\\\\server\\share", "absolute"),
    ("C:\\x", "absolute"), ("c:x", "absolute"), ("a\x00b", "control"), ("a\nb", "control"), ("a\u202eb", "control"),
    ("", "empty"), ("   ", "empty"), (".", "names no file"), ("x" * 1025, "longer"), (5, "string"), (None, "string"),
])
def test_unsafe_names_are_refused(name, fragment):
    with pytest.raises(TJ.RequestError) as e:
        TJ.check_relative_name(name, "teacher")
    assert fragment in str(e.value) and e.value.status == 400 and str(e.value).startswith("teacher: ")


def test_resolution_follows_the_file_system(tree):
    root, outside = tree
    assert TJ.resolve_in_roots([str(root)], "a.safetensors", "t") == Path(os.path.realpath(root / "a.safetensors"))
    assert TJ.resolve_in_roots([str(root)], "sub\\b.ckpt", "t") == Path(os.path.realpath(root / "sub" / "b.ckpt"))
    assert TJ.resolve_in_roots([str(root)], "./sub//b.ckpt", "t") == Path(os.path.realpath(root / "sub" / "b.ckpt"))
    # a symlink that stays inside is fine (its real path is checked, not its spelling)
    assert TJ.resolve_in_roots([str(root)], "link_in.safetensors", "t") == Path(os.path.realpath(root / "a.safetensors"))
    for name in ("link_out.safetensors", "dir_out/secret.safetensors"):
        with pytest.raises(TJ.RequestError, match="symbolic link") as e:
            TJ.resolve_in_roots([str(root)], name, "t")
        assert e.value.status == 400
    with pytest.raises(TJ.RequestError, match="not a file") as e:
        TJ.resolve_in_roots([str(root)], "missing.safetensors", "t")
    assert e.value.status == 404
    with pytest.raises(TJ.RequestError, match="not a folder"):
        TJ.resolve_in_roots([str(root)], "a.safetensors", "t", kind="dir")
    # a second root is searched when the first lacks the name
    other = root.parent / "other"
    other.mkdir()
    (other / "c.safetensors").write_bytes(b"c")
    assert TJ.resolve_in_roots([str(root), str(other)], "c.safetensors", "t").name == "c.safetensors"


def test_links_inside_a_folder_must_stay_in_the_root(tree):
    root, outside = tree
    TJ.check_folder_links(root / "sub", root, "data")  # no links
    TJ.check_folder_links(root / "model", root, "teacher")
    os.symlink(root / "a.safetensors", root / "sub" / "ok.safetensors")  # inside: fine
    TJ.check_folder_links(root / "sub", root, "data")
    os.symlink(outside / "secret.safetensors", root / "sub" / "leak.png")
    with pytest.raises(TJ.RequestError, match="'leak.png' inside 'sub' is a symbolic link") as e:
        TJ.check_folder_links(root / "sub", root, "data")
    assert e.value.status == 400


def test_listings_hide_what_would_be_refused(tree, tmp_path):
    root, outside = tree
    inp = tmp_path / "input"
    (inp / "imgs").mkdir(parents=True)
    (inp / "imgs" / "x.png").write_bytes(b"")
    (inp / "empty").mkdir()
    os.symlink(outside, inp / "escape")
    (outside / "y.png").write_bytes(b"")
    f = TJ.ComfyFolders(checkpoints=[str(root)], diffusers=[str(root)], loras=[str(tmp_path / "loras")], input=str(inp),
                        output=str(tmp_path / "out"))
    assert f.list_checkpoints() == ["a.safetensors", "link_in.safetensors", "sub/b.ckpt"]
    assert f.list_diffusers() == ["model"]
    assert f.list_data_folders() == ["imgs"]
    # ComfyUI's own list (folder_paths) is filtered the same way
    f.checkpoint_names = lambda: ["a.safetensors", "link_out.safetensors", "../x.safetensors"]
    assert f.list_checkpoints() == ["a.safetensors"]


def _body(**kw):
    return {"config": "tiny_cpu.yaml", "teacher": "t", "data": "d", "output_name": "o", **kw}


def test_overrides_are_read_back_exactly_by_the_trainer():
    from lcm_lora.training.config import load_config, parse_override

    raw = {"max_steps": 7, "learning_rate": 1e-5, "rank": 3, "alpha": 1.5, "batch_size": 4, "resolution": 32, "seed": 9,
           "mixed_precision": "bf16", "device": "cpu", "validation_every": 2, "validation_steps": [1, 4],
           "validation_prompts": ['a "quoted" cat, with: yaml # chars', "ünïcode"], "checkpoint_every": 0,
           "samples_per_prompt": 2, "gradient_accumulation": 2, "output_dtype": "fp32"}
    req = TJ.parse_start_request(_body(overrides=raw))
    assert set(raw) == set(TJ.OVERRIDES)  # every allowed override is exercised
    parsed = dict(parse_override(text) for text in req.overrides)
    for name, value in raw.items():
        assert parsed[TJ.OVERRIDES[name].key] == value, name
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", req.overrides)
    assert cfg.optim.learning_rate == 1e-5 and cfg.validation.prompts == raw["validation_prompts"]


@pytest.mark.parametrize("body,fragment", [
    ([], "JSON object"), (_body(extra=1), "unknown field"), ({"config": "c"}, "missing field"),
    (_body(prompts=["p"]), "exactly one"), ({**_body(), "data": None}, "exactly one"),
    (_body(teacher_type="lora"), "teacher_type"), (_body(output_name="a/b"), "plain file name"),
    (_body(overrides=[]), "JSON object"), (_body(overrides={"teacher": "/etc"}), "unknown override"),
    (_body(overrides={"max_steps": 1.5}), "integer"), (_body(overrides={"max_steps": True}), "integer"),
    (_body(overrides={"learning_rate": "1e-4"}), "number"), (_body(overrides={"learning_rate": 2.0}), "between"),
    (_body(overrides={"validation_steps": []}), "list of 1"), (_body(overrides={"validation_steps": [0]}), "between"),
    (_body(overrides={"validation_prompts": ["a\nb"]}), "control"), (_body(overrides={"device": "cuda; rm"}), "one of"),
    ({**_body(), "data": None, "prompts": []}, "list of 1"), ({**_body(), "data": None, "prompts": [3]}, "string"),
])
def test_bad_requests_name_the_field(body, fragment):
    with pytest.raises(TJ.RequestError) as e:
        TJ.parse_start_request(body)
    assert fragment in str(e.value) and e.value.status == 400


def test_publish_never_overwrites(tmp_path):
    loras = tmp_path / "loras"
    loras.mkdir()
    f = TJ.ComfyFolders(checkpoints=[], diffusers=[], loras=[str(loras)], input=str(tmp_path), output=str(tmp_path / "out"))
    m = TJ.JobManager(f, pack_dir=ROOT)
    job = TJ.Job("20260101-000000-abcdef", tmp_path / "job", {})
    job.run_dir.mkdir(parents=True)
    adapter = job.run_dir / "adapter.safetensors"
    adapter.write_bytes(b"new")
    (loras / "mine.safetensors").write_bytes(b"old")
    name = m._publish(job, adapter, loras / "mine.safetensors")
    assert name == "mine_2.safetensors" and (loras / "mine.safetensors").read_bytes() == b"old"
    assert (loras / name).read_bytes() == b"new"
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"x")
    with pytest.raises(TJ.RequestError, match="outside its run folder"):
        m._publish(job, outside, loras / "other.safetensors")


def test_launcher_imports_the_pack_under_any_folder_name(tmp_path):
    """A copy-free alias of the repo with a hyphenated name (as in custom_nodes/) runs the trainer CLI."""
    link = tmp_path / "comfyui-lcm-lora"
    link.symlink_to(ROOT, target_is_directory=True)
    # ComfyUI's own python (where lcm_lora is not installed) too, when the ComfyUI tests are configured
    pythons = [sys.executable] + [p for p in [os.environ.get("COMFYUI_PYTHON")] if p and os.access(p, os.X_OK)]
    for python in pythons:
        code = subprocess.run([python, str(link / "nodes" / "trainer_launch.py"), str(link), "--print-schema"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert code.returncode == 0, (python, code.stderr)
        assert "max_steps:" in code.stdout and "teacher:" in code.stdout
    probe = ("import runpy, sys; sys.argv = ['x', sys.argv[1]];"
             "import importlib; m = runpy.run_path(sys.argv[1] + '/nodes/trainer_launch.py', run_name='probe');"
             "m['load_pack'](sys.argv[1]); import lcm_lora; print(lcm_lora.__file__)")
    out = subprocess.run([sys.executable, "-c", probe, str(link)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(link / "__init__.py")


def test_yaml_numbers_round_trip():
    import yaml

    for v in (1e-5, 1e-8, 0.5, 3.0, 1e20, 7, 123456789):
        assert yaml.safe_load(TJ._yaml_number(v)) == v, v
    assert json.dumps(TJ.override_schema())  # JSON-serialisable for the panel
