"""Path confinement of names a client sends (``lcm_core.safe_names``), checked against the file
system itself (``os.path.realpath``): the trainer panel, the save node and the trainer's output
name all go through this one module.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.lcm_core.safe_names import (
    NameNotFoundError,
    UnsafeNameError,
    check_folder_links,
    check_relative_name,
    is_inside,
    name_in_root,
    resolve_in_roots,
    safe_output_path,
    walk_confined,
)




@pytest.mark.parametrize("name,fragment", [
    ("../x", "'..'"), ("a/../../x", "'..'"), ("..\\x", "'..'"), ("/etc/passwd", "absolute"), ("\\\\server\\share", "absolute"),
    ("C:\\x", "absolute"), ("c:x", "absolute"), ("a\x00b", "control"), ("a\nb", "control"), ("a\u202eb", "control"),
    ("", "empty"), ("   ", "empty"), (".", "names no file"), ("x" * 1025, "longer"), (5, "string"), (None, "string"),
])
def test_unsafe_names_are_refused(name, fragment):
    with pytest.raises(UnsafeNameError) as e:
        check_relative_name(name, "teacher")
    assert fragment in str(e.value) and str(e.value).startswith("teacher: ")
    assert isinstance(e.value, ConfigError)


def test_safe_names_come_back_with_slashes():
    assert check_relative_name("sub\\b.ckpt", "t") == "sub/b.ckpt"
    assert check_relative_name("./sub//b.ckpt", "t") == "sub/b.ckpt"
    assert check_relative_name("my lora.safetensors", "t") == "my lora.safetensors"


def test_resolution_follows_the_file_system(tree):
    root, outside = tree
    assert resolve_in_roots([str(root)], "a.safetensors", "t") == Path(os.path.realpath(root / "a.safetensors"))
    assert resolve_in_roots([str(root)], "sub\\b.ckpt", "t") == Path(os.path.realpath(root / "sub" / "b.ckpt"))
    assert resolve_in_roots([root], "./sub//b.ckpt", "t") == Path(os.path.realpath(root / "sub" / "b.ckpt"))
    # a symlink that stays inside is fine (its real path is checked, not its spelling)
    assert resolve_in_roots([str(root)], "link_in.safetensors", "t") == Path(os.path.realpath(root / "a.safetensors"))
    for name in ("link_out.safetensors", "dir_out/secret.safetensors"):
        with pytest.raises(UnsafeNameError, match="symbolic link"):
            resolve_in_roots([str(root)], name, "t")
    with pytest.raises(NameNotFoundError, match="not a file"):
        resolve_in_roots([str(root)], "missing.safetensors", "t")
    with pytest.raises(NameNotFoundError, match="not a folder"):
        resolve_in_roots([str(root)], "a.safetensors", "t", kind="dir")
    # a second root is searched when the first lacks the name
    other = root.parent / "other"
    other.mkdir()
    (other / "c.safetensors").write_bytes(b"c")
    assert resolve_in_roots([str(root), str(other)], "c.safetensors", "t").name == "c.safetensors"
    assert is_inside(root / "link_in.safetensors", root) and not is_inside(root / "link_out.safetensors", root)


def test_links_inside_a_folder_must_stay_in_the_root(tree):
    root, outside = tree
    check_folder_links(root / "sub", root, "data")  # no links
    check_folder_links(root / "model", root, "teacher")
    os.symlink(root / "a.safetensors", root / "sub" / "ok.safetensors")  # inside: fine
    check_folder_links(root / "sub", root, "data")
    os.symlink(outside / "secret.safetensors", root / "sub" / "leak.png")
    with pytest.raises(UnsafeNameError, match="'leak.png' inside 'sub' is a symbolic link"):
        check_folder_links(root / "sub", root, "data")


def test_confined_walk_does_not_follow_links_out(tree):
    root, outside = tree
    seen = [os.path.relpath(d, os.path.realpath(root)) for d, _, _ in walk_confined(root, 4)]
    assert "dir_out" not in seen and sorted(seen) == [".", "model", "model/unet", "sub"]
    assert [d for d, _, _ in walk_confined(root / "missing", 2)] == []


def test_output_names_and_their_listed_names(tree):
    root, outside = tree
    path = safe_output_path(root, "styles\\my lora", suffix=".safetensors")
    assert name_in_root(path, root) == "styles/my lora.safetensors"
    with pytest.raises(ConfigError, match="outside"):
        safe_output_path(root, "dir_out/x", suffix=".safetensors")


@pytest.mark.parametrize("name", ["../x.safetensors", "a/b.safetensors", "/tmp/x.safetensors", "C:\\x.safetensors"])
def test_trainer_output_name_stays_in_the_output_folder(name):
    """The CLI trainer writes its adapter to ``<output>/<output.name>``: a name that would leave the
    folder is a config error when the config loads (before any training), naming the key."""
    from lcm_lora.training.config import load_config

    with pytest.raises(ConfigError, match="key 'output.name'"):
        load_config({"output": {"name": name}})
    assert load_config({"output": {"name": "my lcm.safetensors"}}).output.name == "my lcm.safetensors"
