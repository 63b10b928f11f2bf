"""The pack as ComfyUI sees it: nodes, tooltips, help pages, web extension, templates."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import comfy_harness as H

pytestmark = pytest.mark.comfyui

NODES = {
    "LCMLoraLoader": "LCM-LoRA Loader",
    "LCMAdapterMerge": "LCM Adapter Merge",
    "LCMAdapterSave": "LCM Adapter Save",
    "LCMSampler": "LCM Sampler",
    "LCMScheduler": "LCM Scheduler",
    "LCMKSampler": "LCM KSampler",
    "LCMCFGGuider": "LCM CFG Guider",
}
EXAMPLES = sorted(p.stem for p in (H.REPO / "example_workflows").glob("*.json"))


def test_pack_imported_without_errors(comfy, object_info):
    log = comfy.log_path.read_text(errors="replace")
    end = log.find("Starting server")
    log = log if end < 0 else log[:end]  # the start-up part
    ours = [line for line in log.splitlines() if H.PACK_NAME in line]
    assert any("seconds:" in line for line in ours), "pack missing from ComfyUI's import times"
    bad = [line for line in ours if "IMPORT FAILED" in line or "Cannot import" in line]
    assert not bad, log[-4000:]
    assert "Error while calling comfy_entrypoint" not in log


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_node_schema(object_info, node_id):
    info = object_info[node_id]
    assert info["category"] == "LCM-LoRA"
    assert info["display_name"] == NODES[node_id]
    assert info["description"]
    assert info["python_module"] == f"custom_nodes.{H.PACK_NAME}"
    inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    assert inputs
    for name, spec in inputs.items():
        opts = spec[1] if len(spec) > 1 else {}
        assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert all(info["output_tooltips"]), f"{node_id} outputs without tooltip"


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_help_page_served(comfy, node_id):
    # The front end fetches /extensions/<pack>/docs/<node>.md for custom nodes (NodeHelpService).
    local = H.REPO / "web" / "docs" / f"{node_id}.md"
    assert local.is_file()
    served = comfy.get(f"/extensions/{H.PACK_NAME}/docs/{node_id}.md").decode()
    assert served == local.read_text()
    assert served.startswith(f"# {NODES[node_id]}")


def test_web_extension_listed(comfy):
    scripts = comfy.get_json("/extensions")
    ours = [s for s in scripts if s.startswith(f"/extensions/{H.PACK_NAME}/")]
    assert f"/extensions/{H.PACK_NAME}/lcm_lora.js" in ours
    assert all(not s.startswith(f"/extensions/{H.PACK_NAME}/docs") for s in ours)


def test_example_workflows_listed_as_templates(comfy):
    assert len(EXAMPLES) >= 5
    templates = comfy.get_json("/workflow_templates")
    assert sorted(templates[H.PACK_NAME]) == EXAMPLES
    for name in EXAMPLES:
        served = json.loads(comfy.get(f"/api/workflow_templates/{H.PACK_NAME}/{name}.json"))
        assert served == json.loads((H.REPO / "example_workflows" / f"{name}.json").read_text())


def test_lora_lists_include_every_format(object_info):
    from conftest import FORMAT_FILES

    loader = object_info["LCMLoraLoader"]["input"]["required"]["lora_name"]
    options = loader[1]["options"] if isinstance(loader[0], str) else loader[0]
    for name in FORMAT_FILES.values():
        assert name in options
    # the same list LoraLoader shows
    stock = object_info["LoraLoader"]["input"]["required"]["lora_name"][0]
    assert sorted(options) == sorted(stock)


def test_docs_describe_every_input(object_info):
    for node_id in NODES:
        text = (H.REPO / "web" / "docs" / f"{node_id}.md").read_text()
        inputs = {**object_info[node_id]["input"].get("required", {}), **object_info[node_id]["input"].get("optional", {})}
        for name in inputs:
            if name.startswith(("adapter_", "weight_")) and name[-1] not in "12":
                continue  # merge slots 3..8 are described once
            assert f"`{name}`" in text, f"{node_id}.md does not describe `{name}`"


def test_package_files_present():
    assert (H.REPO / "web" / "lcm_lora.js").is_file()
    assert Path(H.REPO / "example_workflows").is_dir()
