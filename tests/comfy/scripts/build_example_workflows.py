"""Maintainer tool: (re)write ``example_workflows/*.json`` (ComfyUI UI format) from compact specs.

Run against a ComfyUI server that has the pack loaded (its ``/object_info`` gives each
node's sockets and widget order)::

    python tests/comfy/scripts/build_example_workflows.py http://127.0.0.1:8188 [NAME ...]

The in-ComfyUI tests convert the written files back to API format and run them; the browser
test loads them into the real front end and compares its ``graphToPrompt`` with that
conversion.
"""
from __future__ import annotations

import json
import sys
import urllib.request
import uuid
from pathlib import Path

OUT = Path(__file__).resolve().parents[3] / "example_workflows"
SD15 = "v1-5-pruned-emaonly-fp16.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
LCM15 = "lcm-lora-sdv1-5.safetensors"
LCMXL = "lcm-lora-sdxl.safetensors"
PCM15 = "pcm_sd15_smallcfg_4step_converted.safetensors"  # a released 4-phase PCM LoRA (no metadata)
STYLE = "style-lora-sd15.safetensors"
POS = "a cozy wooden cabin in a snowy forest at dusk, warm window light, detailed illustration"
NEG = "blurry, low quality"
NEG_FIRST_STEPS = "people, cars, blurry, low quality"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _is_widget(spec) -> bool:
    if isinstance(spec[0], list):
        return True
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0] in WIDGET_TYPES and not opts.get("forceInput")


EVERY_STEP = 10000  # LCM KSampler cfg_steps default (lcm_core/cfg_steps.py): cfg on every step


def _lcm_ksampler(seed=42, steps=4, cfg=1.0, mode="auto", denoise=1.0, cfg_steps=EVERY_STEP):
    return {"seed": seed, "steps": steps, "cfg": cfg, "mode": mode, "gamma": 0.3, "eta": 1.0, "denoise": denoise,
            "cfg_steps": cfg_steps}


def _front(ckpt=SD15, size=512, loader=("LCMLoraLoader", {"lora_name": LCM15, "strength_model": 1.0,
                                                            "strength_clip": 1.0, "patch_sampling": True,
                                                            "sampling": "auto"})):
    nodes = [
        (1, "CheckpointLoaderSimple", (40, 120), {"ckpt_name": ckpt}),
        (2, loader[0], (400, 120), loader[1]),
        (3, "CLIPTextEncode", (800, 60), {"text": POS}),
        (4, "CLIPTextEncode", (800, 300), {"text": NEG}),
        (5, "EmptyLatentImage", (800, 520), {"width": size, "height": size, "batch_size": 1}),
    ]
    links = [(1, "MODEL", 2, "model"), (1, "CLIP", 2, "clip"), (2, "CLIP", 3, "clip"), (2, "CLIP", 4, "clip")]
    return nodes, links


def _decode_save(sample_id, ckpt_id=1, prefix="lcm_lora", x=1600, first_id=20, out_name="LATENT"):
    nodes = [(first_id, "VAEDecode", (x, 120), {}), (first_id + 1, "SaveImage", (x + 260, 120), {"filename_prefix": prefix})]
    links = [(sample_id, out_name, first_id, "samples"), (ckpt_id, "VAE", first_id, "vae"), (first_id, "IMAGE", first_id + 1, "images")]
    return nodes, links


def note(node_id, text, pos=(40, 420)):
    return (node_id, "Note", pos, {"text": text})


def spec_sd15():
    nodes, links = _front()
    nodes.append((6, "LCMKSampler", (1200, 120), _lcm_ksampler()))
    links += [(2, "MODEL", 6, "model"), (3, "CONDITIONING", 6, "positive"), (4, "CONDITIONING", 6, "negative"),
              (5, "LATENT", 6, "latent_image")]
    n2, l2 = _decode_save(6, prefix="lcm_lora/sd15_4_steps")
    nodes += n2 + [note(30, "SD 1.5 + LCM-LoRA: 4 steps at cfg 1.0.\nPick your SD 1.5 checkpoint and the LCM-LoRA "
                             "(latent-consistency/lcm-lora-sdv1-5) in your loras folder.")]
    return nodes, links + l2


def spec_sdxl():
    nodes, links = _front(ckpt=SDXL, size=1024, loader=("LCMLoraLoader", {"lora_name": LCMXL, "strength_model": 1.0,
                                                                          "strength_clip": 1.0, "patch_sampling": True,
                                                                          "sampling": "auto"}))
    nodes.append((6, "LCMKSampler", (1200, 120), _lcm_ksampler()))
    links += [(2, "MODEL", 6, "model"), (3, "CONDITIONING", 6, "positive"), (4, "CONDITIONING", 6, "negative"),
              (5, "LATENT", 6, "latent_image")]
    n2, l2 = _decode_save(6, prefix="lcm_lora/sdxl_4_steps")
    nodes += n2 + [note(30, "SDXL (or SSD-1B) + LCM-LoRA: 4 steps, cfg 1.0, 1024×1024.\nUse the LCM-LoRA made for your "
                             "base: lcm-lora-sdxl for SDXL, lcm-lora-ssd-1b for SSD-1B.")]
    return nodes, links + l2


def spec_merge():
    merge = {"method": "concat", "rank": 64, "patch_sampling": True, "adapter_1": STYLE, "weight_1": 0.8,
             "adapter_2": LCM15, "weight_2": 1.0}
    for i in range(3, 9):
        merge[f"adapter_{i}"] = "None"
        merge[f"weight_{i}"] = 1.0
    nodes, links = _front(loader=("LCMAdapterMerge", merge))
    nodes.append((6, "LCMKSampler", (1200, 120), _lcm_ksampler()))
    links += [(2, "MODEL", 6, "model"), (3, "CONDITIONING", 6, "positive"), (4, "CONDITIONING", 6, "negative"),
              (5, "LATENT", 6, "latent_image")]
    n2, l2 = _decode_save(6, prefix="lcm_lora/style_plus_lcm")
    save = (7, "LCMAdapterSave", (400, 700), {"filename_prefix": "lcm_lora/style_plus_lcm_merged", "dtype": "fp16"})
    nodes += n2 + [save, note(30, "Style LoRA + LCM-LoRA merged as 0.8·style + 1.0·LCM (LCM-LoRA paper §3.3).\n"
                                  "Slot 1: your style LoRA, slot 2: the LCM-LoRA; more slots appear as you fill them.\n"
                                  "Un-mute 'LCM Adapter Save' (Ctrl+M) to keep the merged adapter in your loras folder.",
                              pos=(40, 520))]
    links += l2 + [(2, "merged adapter", 7, "adapter")]
    return nodes, links, {7: 2}  # node 7 muted


def spec_hires():
    nodes, links = _front()
    nodes += [
        (6, "LCMKSampler", (1200, 120), _lcm_ksampler()),
        (7, "LatentUpscaleBy", (1200, 520), {"upscale_method": "nearest-exact", "scale_by": 1.5}),
        (8, "LCMKSampler", (1600, 520), _lcm_ksampler(seed=43, steps=2, denoise=0.5)),
    ]
    links += [(2, "MODEL", 6, "model"), (3, "CONDITIONING", 6, "positive"), (4, "CONDITIONING", 6, "negative"),
              (5, "LATENT", 6, "latent_image"), (6, "LATENT", 7, "samples"),
              (2, "MODEL", 8, "model"), (3, "CONDITIONING", 8, "positive"), (4, "CONDITIONING", 8, "negative"),
              (7, "LATENT", 8, "latent_image")]
    n2, l2 = _decode_save(8, prefix="lcm_lora/hires_pass", x=2000)
    nodes += n2 + [note(30, "Hires / img2img pass: 4 LCM steps, upscale the latent ×1.5, then 2 more steps at "
                             "denoise 0.5 (diffusers' img2img strength).\nFor img2img from a picture, replace the "
                             "first pass with Load Image → VAE Encode.")]
    return nodes, links + l2


def spec_tcd():
    nodes, links = _front()
    nodes += [
        (6, "LCMSampler", (1200, 360), {"mode": "tcd", "gamma": 0.3, "eta": 1.0}),
        (7, "LCMScheduler", (1200, 560), {"steps": 4, "original_steps": 50, "denoise": 1.0}),
        (8, "SamplerCustom", (1600, 120), {"add_noise": True, "noise_seed": 42, "cfg": 1.0}),
    ]
    links += [(2, "MODEL", 8, "model"), (3, "CONDITIONING", 8, "positive"), (4, "CONDITIONING", 8, "negative"),
              (6, "SAMPLER", 8, "sampler"), (7, "SIGMAS", 8, "sigmas"), (5, "LATENT", 8, "latent_image")]
    n2, l2 = _decode_save(8, prefix="lcm_lora/tcd", x=2000, out_name="output")
    nodes += n2 + [note(30, "TCD sampling (Trajectory Consistency Distillation) through SamplerCustom: LCM Sampler in "
                             "mode 'tcd' + LCM Scheduler.\ngamma 0 = deterministic, higher = more detail/variation. "
                             "Works with LCM-LoRA and TCD-LoRA.\nFor a TCD-LoRA set the loader's 'sampling' to tcd (adapters trained "
                             "by this pack say so in their metadata: keep auto) and LCM Sampler's mode to auto.")]
    return nodes, links + l2


def spec_negative():
    nodes, links = _front()
    nodes[3] = (4, "CLIPTextEncode", (800, 300), {"text": NEG_FIRST_STEPS})
    nodes.append((6, "LCMKSampler", (1200, 120), _lcm_ksampler(cfg=3.0, cfg_steps=2)))
    links += [(2, "MODEL", 6, "model"), (3, "CONDITIONING", 6, "positive"), (4, "CONDITIONING", 6, "negative"),
              (5, "LATENT", 6, "latent_image")]
    n2, l2 = _decode_save(6, prefix="lcm_lora/negative_prompt")
    nodes += n2 + [note(30, "Negative prompt with LCM-LoRA / TCD: at cfg 1 the negative prompt is ignored. Here cfg 3 "
                             "applies to the first 2 of 4 steps only (cfg_steps 2), the last 2 run at cfg 1: "
                             "6 UNet evaluations instead of 8 with cfg on every step (4 at cfg 1).\n"
                             "SamplerCustomAdvanced users: the LCM CFG Guider node does the same.")]
    return nodes, links + l2


def spec_pcm():
    nodes, links = _front(loader=("LCMLoraLoader", {"lora_name": PCM15, "strength_model": 1.0, "strength_clip": 1.0,
                                                    "patch_sampling": True, "sampling": "pcm", "phases": 4}))
    nodes += [
        (6, "LCMSampler", (1200, 360), {"mode": "auto", "gamma": 0.3, "eta": 1.0}),
        (7, "LCMScheduler", (1200, 560), {"steps": 4, "original_steps": 50, "denoise": 1.0, "schedule": "pcm",
                                          "phases": 4}),
        (8, "SamplerCustom", (1600, 120), {"add_noise": True, "noise_seed": 42, "cfg": 1.0}),
    ]
    links += [(2, "MODEL", 8, "model"), (3, "CONDITIONING", 8, "positive"), (4, "CONDITIONING", 8, "negative"),
              (6, "SAMPLER", 8, "sampler"), (7, "SIGMAS", 8, "sigmas"), (5, "LATENT", 8, "latent_image")]
    n2, l2 = _decode_save(8, prefix="lcm_lora/pcm_4_phases", x=2000, out_name="output")
    nodes += n2 + [note(30, "PCM (Phased Consistency Models, arXiv 2405.18407) / Hyper-SD (TSCD, arXiv 2404.13686) "
                             "LoRA: its map jumps from phase edge to phase edge, so it is sampled with TCD at gamma 0 "
                             "on the phase edges (999, 739, 499, 239 for 4 PCM phases).\nLoader: sampling pcm (tscd for "
                             "Hyper-SD) and phases = the steps the LoRA was released for; LCM Sampler mode auto; LCM "
                             "Scheduler schedule pcm with the same phases and steps. Or: LCM KSampler in mode auto. "
                             "A PCM adapter trained with lcd.phase_starts (e.g. the demo's, 999/819/599/299): give the "
                             "LCM Scheduler its phase_starts (lcm-lora inspect shows them, e.g. 0,15,30,41); the LCM "
                             "KSampler in mode auto reads them from the adapter.")]
    return nodes, links + l2


SPECS = {
    "a_sd15_lcm_lora_4_steps": spec_sd15,
    "b_sdxl_lcm_lora": spec_sdxl,
    "c_style_lora_plus_lcm_merge": spec_merge,
    "d_hires_pass_denoise": spec_hires,
    "e_tcd_mode": spec_tcd,
    "f_negative_prompt_first_steps": spec_negative,
    "g_pcm_phased_4_steps": spec_pcm,
}


def build(spec, info: dict) -> dict:
    res = spec()
    nodes, links = res[0], res[1]
    modes = res[2] if len(res) > 2 else {}
    by_id = {n[0]: n for n in nodes}
    ui_nodes, ui_links = {}, []
    for nid, ntype, pos, values in nodes:
        if ntype == "Note":
            ui_nodes[nid] = {"id": nid, "type": "Note", "pos": list(pos), "size": [340, 140], "flags": {}, "order": 0,
                             "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [values["text"]],
                             "color": "#432", "bgcolor": "#653"}
            continue
        ni = info[ntype]
        req, opt = ni["input"].get("required", {}), ni["input"].get("optional", {})
        specs = {**req, **opt}
        order = ni["input_order"].get("required", []) + ni["input_order"].get("optional", [])
        inputs, widgets = [], []
        for name in order:
            sp = specs[name]
            if _is_widget(sp):
                if name not in values:
                    raise KeyError(f"{ntype}: no value for widget {name}")
                widgets.append(values[name])
                opts = sp[1] if len(sp) > 1 else {}
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
            else:
                inputs.append({"name": name, "type": sp[0], "link": None})
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i}
                   for i, (n, t) in enumerate(zip(ni["output_name"], ni["output"]))]
        ui_nodes[nid] = {"id": nid, "type": ntype, "pos": list(pos), "size": [320, 60 + 26 * (len(widgets) + len(inputs))],
                         "flags": {}, "order": 0, "mode": modes.get(nid, 0), "inputs": inputs, "outputs": outputs,
                         "properties": {"Node name for S&R": ntype}, "widgets_values": widgets}
    for lid, (src, out_name, dst, in_name) in enumerate(links, start=1):
        s, d = ui_nodes[src], ui_nodes[dst]
        oslot = next(i for i, o in enumerate(s["outputs"]) if o["name"] == out_name)
        islot = next(i for i, x in enumerate(d["inputs"]) if x["name"] == in_name)
        s["outputs"][oslot]["links"].append(lid)
        d["inputs"][islot]["link"] = lid
        ui_links.append([lid, src, oslot, dst, islot, s["outputs"][oslot]["type"]])
    # execution order: topological by links
    deps = {nid: {l[1] for l in ui_links if l[3] == nid} for nid in ui_nodes}
    order, done = [], set()
    while len(order) < len(ui_nodes):
        for nid in sorted(ui_nodes):
            if nid not in done and deps[nid] <= done:
                order.append(nid)
                done.add(nid)
    for i, nid in enumerate(order):
        ui_nodes[nid]["order"] = i
    del by_id
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-lcm-lora/" + spec.__name__)),
        "revision": 0,
        "last_node_id": max(ui_nodes),
        "last_link_id": len(ui_links),
        "nodes": [ui_nodes[k] for k in sorted(ui_nodes)],
        "links": ui_links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
        "version": 0.4,
    }


def main(url: str, names: list[str] | None = None) -> None:
    """Write every example, or only ``names`` (the others stay as they are)."""
    with urllib.request.urlopen(url.rstrip("/") + "/object_info") as r:
        info = json.load(r)
    OUT.mkdir(exist_ok=True)
    for name, spec in SPECS.items():
        if names and name not in names:
            continue
        wf = build(spec, info)
        (OUT / f"{name}.json").write_text(json.dumps(wf, indent=1, ensure_ascii=False) + "\n")
        print("wrote", OUT / f"{name}.json")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188", sys.argv[2:])
