"""The web extension in a real browser: Debian's headless chromium, driven by playwright-core
(``tests/browser``), against the real ComfyUI server and front end.

Needs ``chromium`` (``apt-get install chromium``) and ``npm --prefix tests/browser ci``; skips
loudly otherwise. Set ``LCM_LORA_SCREENSHOT=docs/web_extension.png`` to refresh the screenshot
in ``docs/`` (by default it goes to a temporary folder).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import comfy_harness as H
from conftest import LCM_SD15

pytestmark = pytest.mark.comfyui

TCD_LORA = "browser/tcd-recipe.safetensors"  # ui_check.mjs looks for this name (--tcd-lora)


@pytest.fixture(scope="module", autouse=True)
def tcd_metadata_lora(comfy) -> str:
    """The LCM fixture's tensors with a TCD sampling recipe (γ 0.4) in the metadata (before `ui` runs)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from lcm_lora.lcm_core.sampling_recipe import recipe_for_objective

    src = comfy.loras / LCM_SD15
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata() or {})
    meta.update(recipe_for_objective("tcd", gamma=0.4).to_metadata())
    out = comfy.loras / TCD_LORA
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(src)), str(out), metadata=meta)
    return TCD_LORA


@pytest.fixture(scope="module")
def ui(comfy, run_browser):
    return run_browser("ui_check.mjs", comfy.url(""), "--workflows", str(H.REPO / "example_workflows"),
                       screenshot_env="LCM_LORA_SCREENSHOT", screenshot_name="web_extension.png")


def test_extension_loaded_without_errors(ui):
    assert ui["extension_registered"]["lcm"]
    assert sorted(ui["extension_registered"]["names"]) == ["lcm_lora.trainer", "lcm_lora.ui"]
    ours = [e for e in ui["page_errors"] + ui["console_errors"] if "lcm" in e.lower()]
    assert not ours, ours


def test_frontend_prompt_equals_harness_conversion(ui, object_info):
    """The front end's own graphToPrompt is the reference for the API prompts the tests run."""
    assert sorted(ui["prompts"]) == sorted(p.stem for p in (H.REPO / "example_workflows").glob("*.json"))
    for name, front in ui["prompts"].items():
        ours = H.ui_to_api(json.loads((H.REPO / "example_workflows" / f"{name}.json").read_text()), object_info)
        assert sorted(front) == sorted(ours), name
        assert all("UNKNOWN" not in json.dumps(n) for n in front.values()), "front end did not know a node"
        for node_id, node in front.items():
            assert node["class_type"] == ours[node_id]["class_type"]
            assert node["inputs"] == ours[node_id]["inputs"], f"{name} node {node_id}"


def test_examples_raise_no_warning(ui):
    assert all(not w for w in ui["example_warnings"].values()), ui["example_warnings"]


def test_warning_badge_and_toast_for_bad_sampler_settings(ui):
    case = ui["warning_case"]
    assert case["badge"]
    assert any(p.startswith("cfg 7") for p in case["problems"])
    assert any(p.startswith("steps 20") for p in case["problems"])
    assert any("euler" in p for p in case["problems"])
    assert "LCM-LoRA" in ui["toast_text"] and "cfg 7" in ui["toast_text"]
    assert ui["warning_cleared"]
    assert Path(ui["_screenshot_path"]).stat().st_size > 10_000


def test_merge_node_gains_slots_on_demand(ui):
    slots = ui["merge_slots"]
    assert slots["before"]["visible"] == 3
    assert {"adapter_4", "weight_4", "adapter_8", "weight_8"} <= set(slots["before"]["hidden"])
    assert "adapter_3" not in slots["before"]["hidden"]
    assert slots["after"]["visible"] == 4
    assert "adapter_4" not in slots["after"]["hidden"] and "adapter_5" in slots["after"]["hidden"]
    assert slots["after"]["height"] > slots["before"]["height"]
    assert slots["adapter_3"] == slots["chosen"]


def test_merge_report_is_shown_on_the_node(ui):
    report = ui["merge_slots"]["report"]
    assert report["lines"] == ["concat: 0.8·style + 1·lcm", "33 modules, rank 12, relative error 0 (exact)"]
    assert report["grew"]


def test_ignored_inputs_are_hidden(ui):
    hidden = ui["recipe_case"]["hidden"]
    assert "gamma" in hidden["auto"] and "eta" not in hidden["auto"]
    assert {"gamma", "eta"} <= set(hidden["lcm"])
    assert "gamma" not in hidden["tcd"] and "eta" not in hidden["tcd"]
    assert ui["recipe_case"]["merge_hidden_concat"] is True and ui["recipe_case"]["merge_hidden_svd"] is False


def test_warnings_follow_the_sampling_recipe(ui):
    case = ui["recipe_case"]
    # LCM adapter: 12 steps is too many, the lcm sampler is right
    assert any(p.startswith("steps 12") for p in case["lcm_adapter"]["stock"]), case
    assert case["lcm_adapter"]["ours_auto"] == []
    # loader sampling = tcd: no step limit, but a KSampler's lcm sampler is not TCD; our auto mode is
    assert case["tcd_chosen"]["stock"] == ["sampler 'lcm' is not TCD"], case
    assert case["tcd_chosen"]["ours_auto"] == []
    assert case["tcd_chosen"]["ours_lcm"] == ["sampler 'lcm' is not TCD"], case
    # TCD metadata read from the file through ComfyUI's /view_metadata route
    meta = case["metadata"]
    assert meta["recipe"]["objective"] == "tcd" and meta["recipe"]["gamma"] == 0.4, meta
    assert meta["stock"] == ["sampler 'lcm' is not TCD"] and meta["ours_auto"] == []


def test_workflow_saved_before_cfg_steps_gets_the_default(ui, object_info):
    """Widget values are positional: an LCM KSampler saved without cfg_steps (the last widget) keeps its
    values and gets cfg_steps' default (cfg on every step) in the front end — and in the harness's conversion."""
    case = ui["cfg_steps_case"]
    front = case["old_workflow_prompt"]
    ks = next(n for n in front.values() if n["class_type"] == "LCMKSampler")["inputs"]
    assert ks["cfg_steps"] == 10000
    assert (ks["seed"], ks["steps"], ks["cfg"], ks["mode"], ks["denoise"]) == (42, 4, 1.0, "auto", 1.0)
    ours = H.ui_to_api(case["old_workflow"], object_info)
    for node_id, node in front.items():
        assert node["inputs"] == ours[node_id]["inputs"], node_id


def test_no_cfg_warning_when_cfg_applies_to_the_first_steps_only(ui):
    case = ui["cfg_steps_case"]
    assert case["ks_default_cfg_steps"] == 10000
    assert any(p.startswith("cfg 3") for p in case["ks_every_step"]), case
    assert case["ks_first_2_of_4"] == [], case  # cfg 3 on the first 2 of 4 steps: a negative prompt that works
    assert any(p.startswith("cfg 3") for p in case["ks_all_4"]), case
    assert case["guider_defaults"] == {"cfg": 3, "cfg_steps": 2}
    assert case["guider_first_steps"] == [], case
    assert any(p.startswith("cfg 3") for p in case["guider_every_step"]), case
    assert any(p.startswith("cfg 3") for p in case["stock_guider"]), case
