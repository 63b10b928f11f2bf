"""Bad adapters give clear node errors, and the server keeps serving the next prompt."""
from __future__ import annotations

import uuid

import pytest

from conftest import CORRUPT, LCM_SD15, LCM_SDXL, NAN_LORA, SD15_CKPT, STYLE_SD15, cheap_prompt, merge_node

pytestmark = pytest.mark.comfyui


def loader_only(lora: str) -> dict:
    """Checkpoint → LCM-LoRA Loader → LCM Adapter Save: no sampling needed to reach the loader."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CKPT}},
        "lcm": {"class_type": "LCMLoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_name": lora,
                                                          "strength_model": 1.0, "strength_clip": 1.0, "patch_sampling": True}},
        "save": {"class_type": "LCMAdapterSave", "inputs": {"adapter": ["lcm", 2], "filename_prefix": f"err/{uuid.uuid4().hex}",
                                                            "dtype": "fp16"}},
    }


def assert_alive(comfy):
    result = comfy.run(cheap_prompt(uuid.uuid4().hex[:8]))
    assert result.status == "success", result.message()
    assert result.images()


def test_wrong_architecture_is_a_clear_node_error(comfy):
    result = comfy.run(loader_only(LCM_SDXL))
    assert result.status == "error"
    assert result.error["node_type"] == "LCMLoraLoader"
    msg = result.error["exception_message"]
    assert LCM_SDXL in msg and "sdxl" in msg and "sd1" in msg, msg
    assert "architecture mismatch" in msg
    assert_alive(comfy)


def test_wrong_architecture_in_merge_names_the_adapter(comfy):
    g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CKPT}},
         "merge": merge_node(("ckpt", 0), adapters=(STYLE_SD15, LCM_SDXL))}
    g["save"] = {"class_type": "LCMAdapterSave", "inputs": {"adapter": ["merge", 2], "filename_prefix": f"err/{uuid.uuid4().hex}",
                                                            "dtype": "fp16"}}
    result = comfy.run(g)
    assert result.status == "error" and result.error["node_type"] == "LCMAdapterMerge"
    msg = result.error["exception_message"]
    assert LCM_SDXL in msg and "sdxl" in msg and "sd1" in msg, msg
    assert_alive(comfy)


def test_corrupt_adapter_is_a_clear_node_error(comfy):
    result = comfy.run(loader_only(CORRUPT))
    assert result.status == "error"
    assert result.error["node_type"] == "LCMLoraLoader"
    msg = result.error["exception_message"]
    assert CORRUPT in msg, msg
    assert result.error["exception_type"].endswith("AdapterFileError"), result.error["exception_type"]
    assert "Traceback" not in msg
    assert_alive(comfy)


def test_nan_adapter_is_a_clear_node_error(comfy):
    result = comfy.run(loader_only(NAN_LORA))
    assert result.status == "error" and result.error["node_type"] == "LCMLoraLoader"
    msg = result.error["exception_message"]
    assert NAN_LORA in msg and "NaN" in msg, msg
    assert_alive(comfy)


def test_unknown_model_file_is_rejected_before_running(comfy):
    g = loader_only("does-not-exist.safetensors")
    result = comfy.run(g)
    assert result.status == "rejected"  # validate_inputs: the prompt never starts
    details = str(result.error["node_errors"]["lcm"])
    assert "does-not-exist.safetensors" in details and "loras folder" in details
    assert_alive(comfy)


def test_good_adapter_still_loads_after_errors(comfy):
    result = comfy.run(loader_only(LCM_SD15))
    assert result.status == "success", result.message()
    assert "lora key not loaded" not in result.log
