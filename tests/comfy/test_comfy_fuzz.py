"""Malformed adapters through the LCM-LoRA Loader node of a real ComfyUI server, over HTTP
(hardening issue, part 1: "the ComfyUI server answers the next prompt").

Every hand-made case of :mod:`fuzz_adapter_cases` (each problem the issue names: truncated,
wrong header length, invalid JSON, dtype/shape lies, offsets out of range, memory bombs,
NaN/Inf, duplicate keys, mixed formats, keys of another architecture, zero rank, mismatched
up/down, pickles, bad peft folders, …) plus ``LCM_LORA_COMFY_FUZZ_CASES`` (default 60)
hypothesis-generated ones is put into ComfyUI's ``loras`` folder and loaded by
``LCMLoraLoader`` onto the SD1.5 test checkpoint. Each must end the prompt with a node error
raised by our code (an ``LcmLoraError`` subclass; one-line message naming the file) within
``PROMPT_BOUND_S``, and the server must then run a valid prompt; its resident memory may not
grow by more than ``SERVER_RSS_BOUND`` over the run. All cases run; failures are reported together.

The server and its fixtures come from ``tests/comfy/conftest.py`` / ``comfy_harness.py``.
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/ (after tests/comfy): shared case generators
from fuzz_adapter_cases import Case, handmade_cases, malformed_containers, malformed_loras  # noqa: E402

from conftest import SD15_CKPT, cheap_prompt  # noqa: E402

pytestmark = pytest.mark.comfyui

GENERATED = int(os.environ.get("LCM_LORA_COMFY_FUZZ_CASES", "60"))
PROMPT_BOUND_S = 30.0  # one failing loader prompt, over HTTP, on a busy CPU machine
SERVER_RSS_BOUND = 512 * 2**20
OUR_ERRORS = {"LcmLoraError", "AdapterFileError", "ArchitectureMismatchError", "ConfigError", "OutputExistsError"}


def generated_cases(n: int) -> list[Case]:
    out: list[Case] = []

    @settings(max_examples=n, deadline=None, database=None, derandomize=True, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck))
    # the model is SD1.5: cases "bad for another architecture" (expected_arch sdxl) may be fine for it
    @given(case=st.one_of(malformed_containers(), malformed_loras()).filter(lambda c: c.expected_arch in (None, "sd1")))
    def collect(case):
        out.append(case)

    collect()
    return out[:n]


def loader_graph(lora_name: str) -> dict:
    """Checkpoint → LCM-LoRA Loader → LCM Adapter Save (an output node, so the loader runs)."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CKPT}},
        "lcm": {"class_type": "LCMLoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                                                          "lora_name": lora_name, "strength_model": 1.0,
                                                          "strength_clip": 1.0, "patch_sampling": True}},
        "save": {"class_type": "LCMAdapterSave", "inputs": {"adapter": ["lcm", 2],
                                                            "filename": f"fuzz-out/{uuid.uuid4().hex}",
                                                            "dtype": "fp16", "overwrite": False}},
    }


def server_rss(comfy) -> int | None:
    try:
        with open(f"/proc/{comfy.proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, AttributeError):
        return None
    return None


def place(comfy, i: int, case: Case) -> tuple[str, str]:
    """Write the case into the loras folder; returns (lora_name as ComfyUI lists it, name to find in errors)."""
    folder = comfy.loras / "fuzz"
    folder.mkdir(exist_ok=True)
    stem = f"{i:03d}-{case.kind}"
    if case.data is not None:
        (folder / f"{stem}.safetensors").write_bytes(case.data)
        return f"fuzz/{stem}.safetensors", f"{stem}.safetensors"
    (folder / stem).mkdir()
    for rel, data in case.files.items():
        (folder / stem / rel).write_bytes(data)
    return f"fuzz/{stem}/adapter_model.safetensors", stem


def check_failure(result, name_in_error: str, elapsed: float) -> str | None:
    """None when the prompt failed the way it must; otherwise what went wrong."""
    if elapsed > PROMPT_BOUND_S:
        return f"took {elapsed:.1f}s"
    if result.status != "error":
        return f"status {result.status!r} (the loader accepted it)" if result.status == "success" else \
            f"status {result.status!r}: {result.message()[:300]}"
    err = result.error or {}
    if err.get("node_type") != "LCMLoraLoader":
        return f"error in node {err.get('node_type')!r}: {result.message()[:300]}"
    exc_type = str(err.get("exception_type", "")).rsplit(".", 1)[-1]
    msg = str(err.get("exception_message", ""))
    if exc_type not in OUR_ERRORS:
        return f"{exc_type} (not our error): {msg[:300]}"
    if "\n" in msg.strip() or "Traceback" in msg:
        return f"message is not one line: {msg[:300]!r}"
    if name_in_error not in msg:
        return f"message does not name the file: {msg[:300]}"
    return None


def test_malformed_adapters_through_the_loader_node(comfy):
    warm = comfy.run(cheap_prompt(uuid.uuid4().hex[:8]))  # checkpoint loaded and cached before timing
    assert warm.status == "success", warm.message()
    cases = handmade_cases() + generated_cases(GENERATED)
    rss0 = server_rss(comfy)
    failures: list[str] = []
    counts = Counter()
    for i, case in enumerate(cases):
        counts[case.kind] += 1
        lora_name, needle = place(comfy, i, case)
        t0 = time.perf_counter()
        result = comfy.run(loader_graph(lora_name), timeout=300)
        problem = check_failure(result, needle, time.perf_counter() - t0) if case.strict else None
        if not case.strict and result.status not in ("success", "error"):
            problem = f"status {result.status!r}"
        if problem:
            failures.append(f"{lora_name} [{case.kind}: {case.note}]: {problem}")
        alive = comfy.run(cheap_prompt(uuid.uuid4().hex[:8]), timeout=300)
        if alive.status != "success" or not comfy.alive():
            failures.append(f"after {lora_name}: the server did not run the next prompt ({alive.message()[:300]})")
            break
    rss1 = server_rss(comfy)
    if rss0 is not None and rss1 is not None and rss1 - rss0 > SERVER_RSS_BOUND:
        failures.append(f"server RSS grew by {(rss1 - rss0) / 2**20:.0f} MiB over {len(cases)} cases")
    print(f"\n{len(cases)} malformed adapters through LCMLoraLoader: {dict(counts)}")
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)
