"""The trainer panel in a real browser: Debian's headless chromium + playwright-core
(``tests/browser/trainer_panel.mjs``) against the real ComfyUI front end and server.

The panel is opened from its sidebar tab, a refused name shows the server's message, a tiny job is
started from the form and followed to the end (live loss chart, validation grid), and the
adapter it announces is in ComfyUI's ``loras`` folder; the normal-CFG "recommended cfg" field follows the chosen
config. Needs ``chromium`` and
``npm --prefix tests/browser ci``; skips loudly otherwise. Set
``LCM_LORA_TRAINER_SCREENSHOT=docs/trainer_panel.png`` to refresh the screenshot in ``docs/``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import comfy_harness as H

pytest.register_assert_rewrite("trainer_panel_env")
from trainer_panel_env import CONFIG, DATA, TEACHER  # noqa: E402

pytest_plugins = ("trainer_panel_env",)
pytestmark = pytest.mark.comfyui
NORMAL_CFG = "pcm_normal_cfg_sd15.yaml"
MAX_STEPS = 6
VALIDATION_EVERY = 3
@pytest.fixture(scope="module")
def ui(panel, run_browser):
    return run_browser("trainer_panel.mjs", panel.url(""), "--teacher", f"diffusers|{TEACHER}", "--data", DATA,
                       "--config", CONFIG, "--name", "panel lcm", "--max-steps", str(MAX_STEPS),
                       "--validation-every", str(VALIDATION_EVERY), "--normal-config", NORMAL_CFG,
                       screenshot_env="LCM_LORA_TRAINER_SCREENSHOT", screenshot_name="trainer_panel.png")


def test_panel_is_a_sidebar_tab_listing_comfyui_folders(ui, panel):
    assert ui["sidebar"]
    _, opts = panel.get("/lcm_lora/train/options")
    assert ui["options"]["configs"] == opts["configs"]
    assert ui["options"]["teachers"] == [f"{t['type']}|{t['name']}" for t in opts["teachers"]]
    assert ui["options"]["data"] == opts["data_folders"]


def test_refused_name_is_shown(ui):
    assert "output_name" in ui["refusal"] and "'..'" in ui["refusal"], ui["refusal"]


def test_job_from_the_panel_shows_live_loss_and_validation(ui, panel):
    final = ui["final"]
    assert final["status"] == "done", final
    assert "running" in ui["statuses"] and ui["chart_points_while_running"] > 0, ui["statuses"]
    assert final["chart_points"] == MAX_STEPS and final["chart_inked_pixels"] > 500
    assert final["image"] == f"step-{MAX_STEPS:08d}.png"
    assert final["image_natural"][0] > 0 and final["image_natural"][1] > 0
    assert final["cancel_disabled"]
    assert ui["loraloader_lists_it"]  # the panel refreshed ComfyUI's node definitions
    # a job that ended while the panel was closed: the next listing refreshes the loaders once
    assert ui["closed_panel_refresh"] == {"first": 1, "again": 0}, ui["closed_panel_refresh"]
    assert final["lora_name"] == "panel lcm.safetensors" and (panel.loras / final["lora_name"]).is_file()
    ours = [e for e in ui["page_errors"] + ui["console_errors"] if "lcm" in e.lower()]
    refusal = [e for e in ours if e.startswith("Failed to load resource") and e.endswith("/lcm_lora/train/jobs")]
    # only the browser's notes of the deliberate refusals: "../evil", normal_cfg 1 (400) and the taken name (409)
    assert [next(c for c in ("400", "409") if c in e) for e in refusal] == ["400", "400", "409"] and ours == refusal, ours
    assert Path(ui["_screenshot_path"]).stat().st_size > 10_000


def test_normal_cfg_field_follows_the_chosen_config(ui, panel):
    """The "recommended cfg" field (override ``normal_cfg``, ``lcd.normal_cfg``) is shown and sent only for a
    config with ``lcd.solver_guidance: false``; with a guided config a typed value stays hidden and is never
    sent (the guided run keeps its config and hash); the server's refusal of a bad value names the key."""
    from lcm_lora.training.config_panel import panel_overrides

    _, opts = panel.get("/lcm_lora/train/options")
    assert ui["normal_cfg_configs"] == opts["normal_cfg_configs"] and NORMAL_CFG in opts["normal_cfg_configs"]
    spec = panel_overrides()["normal_cfg"]
    field = ui["normal_cfg_field"]
    normal, guided, again = field["normal"], field["guided"], field["normal_again"]
    assert normal["shown"] and not normal["disabled"] and normal["value"] == ""
    assert normal["placeholder"] == f"config: {opts['normal_cfg_configs'][NORMAL_CFG]:g}", normal
    assert (float(normal["min"]), float(normal["max"])) == (spec["min"], spec["max"]) and "lcd.normal_cfg" in normal["title"]
    assert not guided["shown"] and guided["disabled"] and guided["value"] == "3", guided  # kept, hidden, not sent
    assert again["shown"] and not again["disabled"] and again["value"] == "3"
    bodies = ui["start_bodies"]
    assert [b["config"] for b in bodies] == [CONFIG, CONFIG, NORMAL_CFG, NORMAL_CFG], bodies
    assert all("normal_cfg" not in b["overrides"] for b in bodies[:2]), bodies[:2]  # guided: never sent
    assert [b["overrides"]["normal_cfg"] for b in bodies[2:]] == [1, 3]  # numbers, as typed
    assert "key 'lcd.normal_cfg' must be >= 1.01" in ui["normal_cfg_refusal"], ui["normal_cfg_refusal"]
    assert "already exists" in ui["taken_name_refusal"], ui["taken_name_refusal"]
    # the guided job ran its config as shipped (plus the form's overrides): no normal_cfg in it
    job = next(j for j in panel.get("/lcm_lora/train/jobs")[1]["jobs"] if j["lora_name"] == ui["final"]["lora_name"])
    assert "normal_cfg" not in job["request"]["overrides"], job["request"]
