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
PCM_LORA = "browser/pcm-recipe.safetensors"  # likewise (--pcm-lora): a 2-phase PCM recipe
NORMAL_LORA = "browser/pcm-normal-cfg.safetensors"  # --normal-lora: trained without solver guidance, cfg 2
NORMAL_LCM_LORA = "browser/lcm-normal-cfg.safetensors"  # --normal-lcm-lora: likewise, LCM objective, cfg 5
# lcm_lora.recommended_cfg texts whose reading the JS mirror must share with lcm_core.sampling_recipe.read_recipe
CFG_TEXTS = ["2.0", "7.5", " 3 ", "0", "1", "nan", "inf", "-1", "abc", "1e400", "", None]
# lcm_lora.recommended_gamma texts (a TCD recipe): likewise; outside [0, 1] the default γ 0.3
GAMMA_TEXTS = ["0.4", " 0.5 ", "0", "1", "-0.1", "1.5", "nan", "inf", "abc", "", None]


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
    pcm_meta = {**meta, **recipe_for_objective("pcm", phases=2).to_metadata()}
    pcm_meta.pop("lcm_lora.recommended_gamma", None)  # a recipe without γ: pcm's default γ 0
    save_file(load_file(str(src)), str(comfy.loras / PCM_LORA), metadata=pcm_meta)
    # normal-CFG adapters: the trainer's own metadata (lcd.solver_guidance=false, lcd.normal_cfg)
    from lcm_lora.training.config import load_config
    from lcm_lora.training.export import training_metadata

    for name, over in ((NORMAL_LORA, ["lcd.objective=pcm", "lcd.normal_cfg=2"]), (NORMAL_LCM_LORA, ["lcd.normal_cfg=5"])):
        cfg = load_config({}, ["lcd.solver_guidance=false", *over])
        save_file(load_file(str(src)), str(comfy.loras / name), metadata={**meta, **training_metadata("sd1", 4, 4.0, 10, "h", cfg)})
    return TCD_LORA


def _recipe_metas() -> list[dict]:
    from lcm_lora.lcm_core.sampling_recipe import recipe_for_objective

    metas = []
    for text in CFG_TEXTS:
        meta = recipe_for_objective("pcm").to_metadata()
        meta.pop("lcm_lora.recommended_cfg")
        if text is not None:
            meta["lcm_lora.recommended_cfg"] = text
        metas.append(meta)
    for text in GAMMA_TEXTS:
        meta = recipe_for_objective("tcd").to_metadata()
        meta.pop("lcm_lora.recommended_gamma", None)
        if text is not None:
            meta["lcm_lora.recommended_gamma"] = text
        metas.append(meta)
    # one unreadable value keeps the others; integers as int() reads them; a phased adapter's sampler is TCD's
    pcm = recipe_for_objective("pcm").to_metadata()
    metas += [
        {**pcm, "lcm_lora.recommended_gamma": "0.2", "lcm_lora.w_range": "[3,15]"},
        {**pcm, "lcm_lora.phases": "8.0"}, {**pcm, "lcm_lora.phases": "8", "lcm_lora.recommended_steps": "8"},
        {**pcm, "lcm_lora.phases": "1_0"}, {**pcm, "lcm_lora.phases": "6abc"}, {**pcm, "lcm_lora.phases": "1e1"},
        {**pcm, "lcm_lora.recommended_sampler": "lcm"}, {**pcm, "lcm_lora.phase_starts": "0,15,30,41"},
        {**pcm, "lcm_lora.phases": "51"}, {**pcm, "lcm_lora.phases": "50"},
        {**recipe_for_objective("tscd").to_metadata(), "lcm_lora.phases": "51"},
        {"lcm_lora.objective": "lcm", "lcm_lora.recommended_cfg": "7.5", "lcm_lora.recommended_steps": "4.0"},
        {"lcm_lora.objective": "lcm", "lcm_lora.recommended_steps": "5000"},
        {"lcm_lora.objective": "tcd", "lcm_lora.recommended_steps": " 6 ", "lcm_lora.recommended_sampler": "lcm"},
    ]
    return metas


@pytest.fixture(scope="module")
def ui(comfy, run_browser, tmp_path_factory):
    metas = tmp_path_factory.mktemp("recipe_metas") / "metas.json"
    metas.write_text(json.dumps(_recipe_metas()))
    return run_browser("ui_check.mjs", comfy.url(""), "--workflows", str(H.REPO / "example_workflows"),
                       "--normal-lora", NORMAL_LORA, "--normal-lcm-lora", NORMAL_LCM_LORA, "--recipe-metas", str(metas),
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
    # fuse's adapter output with LyCORIS inputs is the svd merge at `rank` (nodes/adapter_merge.py)
    assert ui["recipe_case"]["merge_hidden_fuse"] is False


def test_a_bypassed_node_or_a_reroute_keeps_the_warnings(ui):
    case = ui["pass_through_case"]
    assert case["direct"] and case["bypassed"] == case["direct"] and case["reroute"] == case["direct"], case
    assert case["muted"] == [], case


def test_recipes_are_read_again_after_comfyuis_refresh(ui):
    assert ui["recipe_case"]["recipes_after_refresh"]["gone"] is False, ui["recipe_case"]["recipes_after_refresh"]


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


def test_warnings_follow_a_phased_recipe(ui):
    """PCM / TSCD adapters want tcd at γ 0 (or the γ their recipe records) on their phase edges with steps fitting
    their phases."""
    from lcm_lora.lcm_core.phased_timesteps import phased_timesteps

    case = ui["phased_case"]
    for key, (family, phases) in {"pcm4": ("pcm", 4), "tscd4": ("tscd", 4), "pcm3": ("pcm", 3), "pcm8": ("pcm", 8),
                                  "tscd3": ("tscd", 3), "pcm1": ("pcm", 1)}.items():
        assert case["tops"][key] == phased_timesteps(phases, phases, family), key  # the JS mirror of lcm_core
    assert case["example"] == [] and case["ks_auto"] == [] and case["steps_2"] == [] and case["steps_8"] == []
    assert case["tcd_gamma_0"] == [] and case["ks_auto_2_of_4"] == []
    assert case["sched_lcm"] == ["LCM Scheduler schedule lcm is not pcm"], case
    assert case["sched_phases_2"] == ["LCM Scheduler phases 2 is not 4"], case
    assert case["steps_3"] == ["steps 3 is neither a divisor nor a multiple of 4 phases"], case
    assert case["ks_auto_5"] == ["steps 5 is neither a divisor nor a multiple of 4 phases"], case
    assert case["tcd_gamma_03"] == ["gamma 0.3 is not 0"], case
    assert case["recipe_gamma"] == {"gamma": 0.5, "at_05": [], "at_0": ["gamma 0 is not 0.5"]}, case
    from lcm_lora.lcm_core.errors import ConfigError
    from lcm_lora.lcm_core.phased_timesteps import (_phase_tops, _split_phases, _trailing, check_phase_starts,
                                                    phased_timesteps)

    starts = case["recipe_starts"]
    assert starts["starts"] == [0, 15, 30, 41] and starts["tops"] == phased_timesteps(4, 4, "pcm", starts=[0, 15, 30, 41])
    assert starts["tops"] == [999, 819, 599, 299] and starts["bad"] == [None] * 6, starts
    assert starts["scheduler"] == ['LCM Scheduler phase_starts "" is not the adapter\'s (0,15,30,41)'], starts
    assert starts["scheduler_set"] == [] and starts["follows"] == [], starts
    assert starts["even_adapter"] == ['LCM Scheduler phase_starts "0,15,30,41" is not the adapter\'s (empty (PCM\'s even '
                                      "phases))"], starts
    # what the LCM Scheduler node refuses, the warning names; the even split spelt out is the adapter's
    assert starts["unreadable"] == ['LCM Scheduler phase_starts "0,15,30" is not 4 starts (0 first, increasing, below 50)']
    with pytest.raises(ConfigError):  # nodes/lcm_scheduler.read_phase_starts' check
        check_phase_starts("0,15,30".split(","), 4)
    assert starts["even_spelt_out"] == [] and check_phase_starts("0,12,25,37".split(","), 4) == [0, 12, 25, 37]
    assert phased_timesteps(4, 4, "pcm", starts=[0, 12, 25, 37]) == phased_timesteps(4, 4, "pcm")
    # steps that are a multiple of the phases but do not fit between the edges: the nodes sample evenly spaced
    # ("trailing") timesteps instead, as for any other count — the adapter was not trained on them, so it is warned
    assert starts["steps_40"] == ["steps 40 do not fit between the phase edges (10 per phase)"], starts
    assert starts["steps_8"] == [], starts
    assert starts["even_denoise_005"] == ["steps 4 (80 at denoise 0.05) do not fit between the phase edges (20 per phase)"]
    assert phased_timesteps(40, 4, "pcm", starts=[0, 15, 30, 41]) == _trailing(40, 1000)
    assert phased_timesteps(4, 4, "pcm", denoise=0.05) == _trailing(80, 1000)[-4:]
    expected = []  # the JS mirror: the split, or null where the nodes fall back
    for total, st in ((40, [0, 15, 30, 41]), (8, [0, 15, 30, 41]), (80, None), (12, None), (2, [0, 15, 30, 41])):
        tops = _phase_tops(4, "pcm", 50, 1000, st)
        split = tops[:: 4 // total] if 4 % total == 0 else _split_phases(tops, total // 4, "pcm", 50, 1000)
        expected.append(split)
        assert split is None or phased_timesteps(total, 4, "pcm", starts=st) == split
    assert expected[0] is None and expected[2] is None and None not in expected[1::2], expected
    assert starts["timesteps"] == expected, starts["timesteps"]
    assert case["mode_lcm"] == ["sampler 'lcm' is not TCD"], case
    assert case["ks_tcd"] == ["mode tcd samples LCM timesteps, not the phase edges"], case
    assert case["stock"] == ["sampler 'lcm' is not TCD", "sgm_uniform sigmas are not the phase edges"], case
    assert "PCM adapter" in case["stock_message"] and "arXiv 2405.18407" in case["stock_message"]
    assert "999, 739, 499, 239" in case["stock_message"], case["stock_message"]
    assert case["tscd_chosen"] == ["LCM Scheduler schedule pcm is not tscd"], case
    assert "TSCD adapter" in case["tscd_message"] and "arXiv 2404.13686" in case["tscd_message"]
    # sampling back to auto on an adapter without metadata: LCM — the LCM Sampler's auto mode is fine, the
    # scheduler's phase edges are not (a PCM LoRA the loader treats as LCM)
    assert case["auto_no_metadata"] == {"custom": ["LCM Scheduler schedule pcm is for a PCM adapter (set the loader's "
                                                   "sampling to pcm)"], "ks_auto": []}, case
    # hidden inputs: phases unless pcm / tscd; the scheduler's original_steps when its schedule is phased
    hidden = case["hidden"]
    assert "phases" not in hidden["loader_pcm"] and "phases" in hidden["loader_auto"]
    assert "original_steps" in hidden["sched_pcm"] and "phases" not in hidden["sched_pcm"]
    assert "phases" in hidden["sched_lcm"] and "original_steps" not in hidden["sched_lcm"]
    assert "phase_starts" not in hidden["sched_pcm"] and "phase_starts" in hidden["sched_lcm"]  # pcm only
    # metadata read through ComfyUI's /view_metadata route: a 2-phase PCM recipe
    meta = case["metadata"]
    assert meta["recipe"]["objective"] == "pcm" and meta["recipe"]["phases"] == 2 and meta["recipe"]["gamma"] == 0, meta
    assert meta["custom"] == ["LCM Scheduler phases 4 is not 2"], meta
    assert meta["ks_auto"] == [], meta  # 4 steps of 2 phases: a multiple
    assert "999, 499" in meta["message"], meta


def test_js_recipe_cfg_and_gamma_mirror_read_recipe(ui):
    from lcm_lora.lcm_core.sampling_recipe import read_recipe

    def fields(r):
        return [r.cfg, r.gamma, r.steps, r.phases, r.sampler, list(r.phase_starts) if r.phase_starts else None]

    metas = _recipe_metas()
    expected = [fields(read_recipe(m)) for m in metas]
    got = ui["normal_cfg_case"]["parity"]
    assert got == expected, [(m, g, e) for m, g, e in zip(metas, got, expected) if g != e]


def test_cfg_check_follows_a_normal_cfg_recipe(ui):
    """An adapter distilled without guidance (recipe cfg R > 1) is sampled with real CFG: no warning up to 2 R on
    every step, a warning above; cfg <= 1 or cfg_steps 0 (unguided samples) warn. Guided adapters: cfg > 2 as before."""
    case = ui["normal_cfg_case"]
    assert case["factor"] == 2
    assert case["guided"] == {"cfg3": ["cfg 3 > 2"], "cfg1": []}, case["guided"]
    assert case["recipe"]["objective"] == "pcm" and case["recipe"]["cfg"] == 2 and case["recipe"]["phases"] == 4
    assert case["custom"] == {"1": ["cfg 1 (unguided)"], "0.5": ["cfg 0.5 (unguided)"], "1.5": [], "2": [], "4": [],
                              "4.5": ["cfg 4.5 > 4 (2 × its cfg 2)"], "7.5": ["cfg 7.5 > 4 (2 × its cfg 2)"]}, case["custom"]
    msg = case["custom_message"]
    assert "PCM adapter" in msg and "cfg ≈ 2 on every step" in msg and "negative prompts work" in msg, msg
    assert "cfg 1-2" not in msg, msg
    assert case["ks"] == {"cfg2": [], "cfg1": ["cfg 1 (unguided)"], "cfg_steps_0": ["cfg_steps 0 (unguided)"],
                          "cfg6_first_2": [], "cfg6_every": ["cfg 6 > 4 (2 × its cfg 2)"]}, case["ks"]
    lcm = case["lcm"]
    assert lcm["recipe"]["objective"] == "lcm" and lcm["recipe"]["cfg"] == 5, lcm
    assert (lcm["5"], lcm["10"], lcm["10.5"], lcm["1"]) == ([], [], ["cfg 10.5 > 10 (2 × its cfg 5)"], ["cfg 1 (unguided)"]), lcm
    assert "LCM-LoRA wants 2-8 steps, cfg ≈ 5 on every step" in lcm["message"], lcm["message"]
