"""Malformed adapters through the LCM-LoRA Loader node of a real ComfyUI server, over HTTP
(hardening issue, part 1: "the ComfyUI server answers the next prompt").

Each case is put into ComfyUI's ``loras`` folder and loaded by ``LCMLoraLoader`` onto the SD1.5
test checkpoint. Each must end the prompt with a node error raised by our code (an
``LcmLoraError`` subclass; one-line message naming the file) within ``PROMPT_BOUND_S``, and the
server must then run a valid prompt; its resident memory may not grow by more than
``SERVER_RSS_BOUND`` over the run. All cases run; failures are reported together.

* default run (``comfyui``): :func:`sample_cases` — one hypothesis-generated case of every
  malformation class the generators know (each container defect: truncated, header length,
  header garbage, invalid JSON, dtype/shape lies, offsets, memory bombs, duplicate JSON keys,
  bad entries/metadata, not UTF-8, deep nesting, not an object, tiny, 5000-digit integers; each
  LoRA defect: NaN/Inf, zero rank, rank mismatch, missing partner, bad dims, integer dtype, bad
  alpha, bad lora_mid, mixed formats, unknown module, non-LoRA key, DoRA/LoHa, duplicate module,
  empty, bad LoraConfig metadata, another architecture, wrong width, block index out of range)
  plus the hand-made classes the generators do not make (pickle, HTML page, peft folders,
  1-D ``lora_down`` in LDM names, a valid float8 file): 40 cases, ≈1 min.
* ``slow`` + ``comfyui``: every hand-made case of :mod:`fuzz_adapter_cases` (≈230) plus
  ``LCM_LORA_COMFY_FUZZ_CASES`` (default 60) hypothesis-generated ones (≈10 min).

The server and its fixtures come from ``tests/comfy/conftest.py`` / ``comfy_harness.py``.
"""
from __future__ import annotations

import functools
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
from fuzz_adapter_cases import (CONTAINER_DEFECTS, LORA_DEFECTS, Case, handmade_cases,  # noqa: E402
                                malformed_containers, malformed_loras)

from conftest import SD15_CKPT, cheap_prompt  # noqa: E402

pytestmark = pytest.mark.comfyui

GENERATED = int(os.environ.get("LCM_LORA_COMFY_FUZZ_CASES", "60"))
PROMPT_BOUND_S = 30.0  # one failing loader prompt, over HTTP, on a busy CPU machine
SERVER_RSS_BOUND = 512 * 2**20
OUR_ERRORS = {"LcmLoraError", "AdapterFileError", "ArchitectureMismatchError", "ConfigError", "OutputExistsError"}


def _for_sd1(case: Case) -> bool:
    # the model is SD1.5: cases "bad for another architecture" (expected_arch sdxl) may be fine for it
    return case.expected_arch in (None, "sd1")


def generated_cases(n: int) -> list[Case]:
    out: list[Case] = []

    @settings(max_examples=n, deadline=None, database=None, derandomize=True, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(malformed_containers(), malformed_loras()).filter(_for_sd1))
    def collect(case):
        out.append(case)

    collect()
    return out[:n]


def one_of_kind(strategy, kind: str, tries: int = 40) -> Case:
    """The first (derandomised) example of ``strategy`` whose class is ``kind`` and that fits SD1.5
    (a LoRA defect that does not apply to the drawn base falls back to another class)."""
    found: list[Case] = []

    @settings(max_examples=tries, deadline=None, database=None, derandomize=True, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def collect(case):
        if not found and case.kind == kind and _for_sd1(case):
            found.append(case)

    collect()
    if not found:
        raise AssertionError(f"no {kind} case for SD1.5 in {tries} examples")
    return found[0]


# Hand-made classes the generators do not produce (kinds from fuzz_adapter_cases.handmade_cases).
HANDMADE_SAMPLE = ("pickle_checkpoint", "html_error_page", "peft_invalid_json", "peft_weights_nan",
                   "matrix_kohya_ldm_conv1_down_1d", "valid_float8_e4m3fn")


@functools.lru_cache(maxsize=1)
def sample_cases() -> tuple[Case, ...]:
    """One case of every malformation class (see the module docstring)."""
    cases = [one_of_kind(malformed_containers(kinds=(k,)), k) for k in CONTAINER_DEFECTS]
    cases += [one_of_kind(malformed_loras(kinds=(k,)), k) for k in LORA_DEFECTS]
    handmade = {c.kind: c for c in handmade_cases()}
    cases += [handmade[k] for k in HANDMADE_SAMPLE]
    return tuple(cases)


def loader_graph(lora_name: str) -> dict:
    """Checkpoint → LCM-LoRA Loader → LCM Adapter Save (an output node, so the loader runs)."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CKPT}},
        "lcm": {"class_type": "LCMLoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                                                          "lora_name": lora_name, "strength_model": 1.0,
                                                          "strength_clip": 1.0, "patch_sampling": True}},
        "save": {"class_type": "LCMAdapterSave", "inputs": {"adapter": ["lcm", 2],
                                                            "filename_prefix": f"fuzz-out/{uuid.uuid4().hex}",
                                                            "dtype": "fp16"}},
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


def place(comfy, sub: str, i: int, case: Case) -> tuple[str, str]:
    """Write the case into ``loras/<sub>/``; returns (lora_name as ComfyUI lists it, name to find in errors)."""
    folder = comfy.loras / sub
    folder.mkdir(exist_ok=True)
    stem = f"{i:03d}-{case.kind}"
    if case.data is not None:
        (folder / f"{stem}.safetensors").write_bytes(case.data)
        return f"{sub}/{stem}.safetensors", f"{stem}.safetensors"
    (folder / stem).mkdir()
    for rel, data in case.files.items():
        (folder / stem / rel).write_bytes(data)
    return f"{sub}/{stem}/adapter_model.safetensors", stem


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


def run_cases(comfy, cases: list[Case]) -> None:
    warm = comfy.run(cheap_prompt(uuid.uuid4().hex[:8]))  # checkpoint loaded and cached before timing
    assert warm.status == "success", warm.message()
    rss0 = server_rss(comfy)
    failures: list[str] = []
    counts = Counter()
    folder = f"fuzz-{uuid.uuid4().hex[:6]}"
    for i, case in enumerate(cases):
        counts[case.kind] += 1
        lora_name, needle = place(comfy, folder, i, case)
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


def test_sample_covers_every_class():
    """The default run's sample holds every generator class and the hand-made extras, once each."""
    kinds = [c.kind for c in sample_cases()]
    assert sorted(kinds) == sorted([*CONTAINER_DEFECTS, *LORA_DEFECTS, *HANDMADE_SAMPLE])


def test_malformed_adapters_through_the_loader_node(comfy):
    """One case of every malformation class (40), over HTTP."""
    run_cases(comfy, list(sample_cases()))


@pytest.mark.slow
def test_all_malformed_adapters_through_the_loader_node(comfy):
    """Every hand-made case plus LCM_LORA_COMFY_FUZZ_CASES generated ones (≈290), over HTTP."""
    run_cases(comfy, handmade_cases() + generated_cases(GENERATED))
