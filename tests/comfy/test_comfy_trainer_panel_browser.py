"""The trainer panel in a real browser: Debian's headless chromium + playwright-core
(``tests/browser/trainer_panel.mjs``) against the real ComfyUI front end and server.

The panel is opened from its sidebar tab, a refused name shows the server's message, a tiny job is
started from the form and followed to the end (live loss chart, validation grid), and the
adapter it announces is in ComfyUI's ``loras`` folder. Needs ``chromium`` and
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
MAX_STEPS = 6
VALIDATION_EVERY = 3
@pytest.fixture(scope="module")
def ui(panel, run_browser):
    return run_browser("trainer_panel.mjs", panel.url(""), "--teacher", f"diffusers|{TEACHER}", "--data", DATA,
                       "--config", CONFIG, "--name", "panel lcm", "--max-steps", str(MAX_STEPS),
                       "--validation-every", str(VALIDATION_EVERY),
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
    assert final["lora_name"] == "panel lcm.safetensors" and (panel.loras / final["lora_name"]).is_file()
    ours = [e for e in ui["page_errors"] + ui["console_errors"] if "lcm" in e.lower()]
    refusal = [e for e in ours if e.startswith("Failed to load resource") and "400" in e and e.endswith("/lcm_lora/train/jobs")]
    assert len(refusal) == 1 and ours == refusal, ours  # only the browser's note of the deliberate "../evil" refusal
    assert Path(ui["_screenshot_path"]).stat().st_size > 10_000
