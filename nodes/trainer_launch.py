"""Launcher of one trainer-panel job: ``python trainer_launch.py <pack folder> [lcm-lora train args ...]``.

Inside ComfyUI the pack is imported under its folder name (``custom_nodes/comfyui-lcm-lora``,
hyphens and all), not as ``lcm_lora``. This script, run by :mod:`.trainer_jobs` with ComfyUI's
python, registers the pack folder as the package ``lcm_lora`` (``importlib`` spec with
``submodule_search_locations``, before anything else can import an installed ``lcm_lora``) and
then runs the same entry point as ``lcm-lora train`` (:func:`lcm_lora.training.cli.main`).

It also watches its parent: if ComfyUI dies without cancelling the job, or re-executes itself in
place, the trainer gets SIGTERM (checkpoint, then exit) instead of running on as an orphan (the
parent's pid changing, or end of file on stdin: a pipe whose other end only ComfyUI holds). Standard library only; it
is a script, not a module of the package (no relative imports).
"""
import importlib.util
import os
import signal
import stat
import sys
import threading
import time


def load_pack(pack_dir: str, name: str = "lcm_lora"):
    """Import ``pack_dir/__init__.py`` as the package ``name`` (sub-modules resolve inside it).

    The project's one helper for importing the pack folder as a package; scripts that run inside
    ComfyUI's python (tests/comfy/scripts/comfy_side.py, benchmarks/nodes/in_comfy.py, …) load it
    with ``runpy.run_path("<pack>/nodes/trainer_launch.py")["load_pack"](pack, "comfyui_lcm_lora")``."""
    init = os.path.join(pack_dir, "__init__.py")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[pack_dir])
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: {init}: not an importable LCM-LoRA pack")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _watch_parent(parent: int, period: float = 2.0) -> None:
    while True:
        time.sleep(period)
        if os.getppid() != parent:  # re-parented: ComfyUI is gone
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _watch_lifeline() -> None:
    """ComfyUI holds the other end of our stdin pipe: end of file means it exited, was killed, or re-executed itself
    in place (ComfyUI-Manager's restart: os.execv keeps the pid, so the parent check alone does not see it)."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        return
    os.kill(os.getpid(), signal.SIGTERM)


def _stdin_is_a_pipe() -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        return False


def main(argv) -> int:
    if len(argv) < 2:
        print("usage: trainer_launch.py PACK_DIR [lcm-lora train arguments ...]", file=sys.stderr)
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # nodes/ must not shadow top-level modules
    pack_dir = os.path.abspath(argv[1])
    load_pack(pack_dir)
    # The same start-up as `lcm-lora train` (cli/main.py): passive OpenMP waiting before torch
    # loads (ComfyUI is busy on the same machine) and no library noise in the panel's log.
    from lcm_lora.lcm_core.cpu_threads import configure_before_torch
    from lcm_lora.lcm_core.quiet_libraries import quiet_libraries

    configure_before_torch()
    quiet_libraries("--debug" in argv)
    if os.name == "posix":
        threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
        if _stdin_is_a_pipe():
            threading.Thread(target=_watch_lifeline, daemon=True).start()
    from lcm_lora.training.cli import main as train_main

    return train_main(list(argv[2:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
