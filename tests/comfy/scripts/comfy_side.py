"""Helper run *inside ComfyUI's own Python* (``COMFYUI_PYTHON``) by the in-ComfyUI tests.

It never imports the project; it asks ComfyUI itself what a model looks like, so
the fixtures it makes are in exactly the layout ComfyUI reads.

Sub-commands (all print one JSON line on stdout):

``checkpoint``  write an architecture-exact, random-weight single-file checkpoint
                (original LDM/SGM key layout: ``model.diffusion_model.*``,
                ``cond_stage_model.*`` / ``conditioner.embedders.*``,
                ``first_stage_model.*``), as ComfyUI's ``CheckpointSave`` would
                write it (``BaseModel.state_dict_for_saving``). The architecture
                comes from a diffusers UNet's parameter shapes (made by the
                project venv from ``lcm_core.model_configs``) passed through
                ComfyUI's own ``model_config_from_diffusers_unet``; the written
                file is re-detected with ``model_config_from_unet`` and the run
                fails unless ComfyUI recognises the expected architecture.
                Weights are streamed to disk (fp16, N(0, 1/fan_in)) so memory
                stays small; norms are 1, biases 0.
``sigmas``      import the pack the way ComfyUI does and run the LCM Scheduler node for each
                ``--cases`` (steps,original,denoise[,schedule,phases];…); map its sigmas back to timesteps with
                ComfyUI's LCM model sampling (``ModelSamplingDiscrete`` "lcm") and with the
                plain discrete one.
``facts``       ``keymap`` and ``sigmas`` in one process (one ComfyUI import): ``{"keymaps", "sigmas"}``.
``routes``      create ComfyUI's real ``PromptServer``, import the pack as ComfyUI does and record its
                ``/lcm_lora/`` routes on ``PromptServer.instance.routes`` after the import, after
                ``comfy_entrypoint()``, after ``on_load()`` (twice) and after ``get_node_list()``.
``keymap``      print every LoRA key ComfyUI's ``model_lora_keys_unet`` /
                ``model_lora_keys_clip`` accept for that architecture (the maps
                ``LoraLoader`` uses), built on the meta device.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import time

# Bump when the checkpoint layout or the random weights change (cached checkpoints are re-made).
CHECKPOINT_VERSION = 1

EXPECTED_CLASS = {"sd1": "SD15", "sd2": "SD20", "sdxl": "SDXL", "ssd1b": "SSD1B"}


def _import_comfy(comfy_path: str):
    sys.path.insert(0, comfy_path)
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    import torch  # noqa: F401
    import comfy.model_detection  # noqa: F401
    import comfy.lora  # noqa: F401
    import comfy.supported_models  # noqa: F401


def boot_pack_script():
    """For a check script run by ``comfy_harness.run_pack_script``: parse ``--comfyui`` / ``--repo``, import
    ComfyUI (``--cpu``) and then the pack; one torch thread (tiny models). Returns the pack module."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--repo", required=True)
    a = ap.parse_args()
    _import_comfy(a.comfyui)
    import torch

    torch.set_num_threads(1)  # a tiny model: threads only add overhead on a shared machine
    return _import_pack(a.repo)


def tiny_sd15_model(device, seed: int = 0):
    """A tiny SD1.5-like model: ComfyUI's own UNetModel and SD15 model config with random weights (fan-in scaled),
    as a ``ModelPatcher`` on ``device``; returns it and the generator that drew the weights (for conditioning)."""
    import torch

    import comfy.model_patcher
    import comfy.supported_models

    unet_config = {"context_dim": 32, "model_channels": 32, "use_linear_in_transformer": False, "adm_in_channels": None,
                   "use_temporal_attention": False, "in_channels": 4, "out_channels": 4, "num_res_blocks": [1, 1],
                   "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "channel_mult": [1, 2],
                   "transformer_depth_middle": 1, "use_spatial_transformer": True, "image_size": 32, "use_checkpoint": False,
                   "legacy": False, "num_heads": 2, "num_head_channels": -1}
    base = comfy.supported_models.SD15(unet_config).get_model({})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in base.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / max(1, p[0].numel()) ** 0.5)
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device), gen


def _meta_from_shapes(path: str):
    import torch

    with open(path) as f:
        shapes = json.load(f)
    return {k: torch.empty(tuple(v), device="meta") for k, v in shapes.items()}


def _model_config(arch: str, shapes_path: str):
    import comfy.model_detection as md

    mc = md.model_config_from_diffusers_unet(_meta_from_shapes(shapes_path))
    if mc is None or type(mc).__name__ != EXPECTED_CLASS[arch]:
        raise SystemExit(f"ComfyUI did not recognise the {arch} UNet shapes (got {type(mc).__name__ if mc else None})")
    return mc


def _meta_models(arch: str, shapes_path: str):
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    mc = _model_config(arch, shapes_path)
    mc.set_inference_dtype(torch.float16, None)
    model = mc.get_model({}, device="meta")
    clip = mc.clip_target().clip(device="meta", dtype=torch.float16)
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    return mc, model, clip, vae


def _init_std(name: str, shape) -> float:
    """0 for biases, 1 for norm scales (handled by the caller), 1/sqrt(fan_in) for weights."""
    fan_in = 1
    for s in shape[1:]:
        fan_in *= int(s)
    return 1.0 / math.sqrt(max(fan_in, 1))


def cmd_checkpoint(a) -> dict:
    import numpy as np
    import torch
    import comfy.model_detection as md

    torch.set_num_threads(1)
    mc, model, clip, vae = _meta_models(a.arch, a.shapes)
    sd = model.state_dict_for_saving(clip.state_dict(), vae.state_dict())
    names = sorted(sd)
    # ComfyUI must detect the architecture from the key layout we are about to write.
    unet = {k: sd[k] for k in names if k.startswith("model.diffusion_model.")}
    detected = md.model_config_from_unet(unet, "model.diffusion_model.")
    if detected is None or type(detected).__name__ != EXPECTED_CLASS[a.arch]:
        raise SystemExit(f"layout not detected as {EXPECTED_CLASS[a.arch]}: {detected}")

    header, offset = {}, 0
    for k in names:
        n = int(np.prod(sd[k].shape)) if len(sd[k].shape) else 1
        header[k] = {"dtype": "F16", "shape": list(sd[k].shape), "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    header["__metadata__"] = {"format": "pt", "lcm_lora_test_fixture": f"random {a.arch} checkpoint, seed {a.seed}"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)

    gen = torch.Generator().manual_seed(a.seed)
    pool = torch.randn(1 << 24, generator=gen).numpy()
    pools: dict[float, np.ndarray] = {}
    tmp = a.out + ".partial"
    t0 = time.time()
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for k in names:
            shape = sd[k].shape
            n = int(np.prod(shape)) if len(shape) else 1
            leaf = k.rsplit(".", 1)[-1]
            if leaf == "bias" or len(shape) == 0:
                f.write(np.zeros(n, dtype=np.float16).tobytes())
                continue
            if len(shape) == 1:  # norm scales
                f.write(np.ones(n, dtype=np.float16).tobytes())
                continue
            std = round(_init_std(k, shape), 6)
            if std not in pools:
                pools[std] = (pool * std).astype(np.float16)
            p = pools[std]
            start = int.from_bytes(hashlib.sha1(k.encode()).digest()[:4], "little") % p.size
            written = 0
            while written < n:
                chunk = p[start:start + (n - written)]
                f.write(chunk.tobytes())
                written += chunk.size
                start = 0
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, a.out)
    return {"out": a.out, "model_class": type(detected).__name__, "tensors": len(names),
            "parameters": sum(int(np.prod(sd[k].shape)) for k in names), "bytes": os.path.getsize(a.out),
            "seconds": round(time.time() - t0, 1)}


def cmd_keymap(a) -> dict:
    """``--arch``/``--shapes`` may be comma-separated lists; writes {arch: {...}} to ``--out``."""
    import comfy.lora

    result = {}
    for arch, shapes in zip(a.arch.split(","), a.shapes.split(",")):
        mc, model, clip, _ = _meta_models(arch, shapes)
        sd = {**{k: tuple(v.shape) for k, v in model.state_dict().items()},
              **{k: tuple(v.shape) for k, v in clip.state_dict().items()}}

        def entry(target):
            key = target if isinstance(target, str) else target[0]
            return [key, list(sd.get(key, ()))]

        unet_keys = comfy.lora.model_lora_keys_unet(model, {})
        clip_keys = comfy.lora.model_lora_keys_clip(clip, {})
        result[arch] = {"model_class": type(mc).__name__,
                        "unet": {k: entry(v) for k, v in unet_keys.items()},
                        "clip": {k: entry(v) for k, v in clip_keys.items()}}
    with open(a.out, "w") as f:
        json.dump(result, f)
    return {"out": a.out, **{arch: {"unet": len(r["unet"]), "clip": len(r["clip"])} for arch, r in result.items()}}


def _import_pack(repo: str):
    import runpy

    import folder_paths  # noqa: F401  (the pack imports its nodes only inside ComfyUI)

    load_pack = runpy.run_path(os.path.join(repo, "nodes", "trainer_launch.py"), run_name="lcm_lora_launcher")["load_pack"]
    return load_pack(repo, "comfyui_lcm_lora")


def cmd_sigmas(a) -> dict:
    import torch
    import comfy.model_sampling
    from comfy_extras.nodes_model_advanced import LCM, ModelSamplingDiscreteDistilled

    pack = _import_pack(a.repo)
    scheduler = pack.nodes.lcm_scheduler.LCMScheduler
    mc = _model_config("sd1", a.shapes)

    class LcmSampling(ModelSamplingDiscreteDistilled, LCM):
        pass

    class EpsSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    lcm_ms, eps_ms = LcmSampling(mc), EpsSampling(mc)
    out = []
    for case in a.cases.split(";"):
        steps, original, denoise, *phased = case.split(",")  # optional schedule,phases[,starts a/b/c] (pcm / tscd)
        key = [int(steps), int(original), float(denoise)]
        if len(phased) == 3:  # phase_starts, written with "/" (the cases are comma-separated)
            key += [phased[0], int(phased[1]), phased[2]]
            sig = scheduler.execute(int(steps), int(original), float(denoise), phased[0], int(phased[1]),
                                    phased[2].replace("/", ",")).args[0]
        elif phased:
            key += [phased[0], int(phased[1])]
            sig = scheduler.execute(int(steps), int(original), float(denoise), phased[0], int(phased[1])).args[0]
        else:  # the inputs as an old prompt gives them (no schedule / phases)
            sig = scheduler.execute(int(steps), int(original), float(denoise)).args[0]
        pos = sig[:-1] if len(sig) else sig
        out.append({"case": key, "sigmas": sig.tolist(),
                    "lcm_timesteps": lcm_ms.timestep(pos).tolist() if len(pos) else [],
                    "eps_timesteps": eps_ms.timestep(pos).tolist() if len(pos) else [],
                    "eps_table": [float(eps_ms.sigma(torch.tensor(float(t)))) for t in eps_ms.timestep(pos).tolist()]
                    if len(pos) else []})
    with open(a.out, "w") as f:
        json.dump(out, f)
    return {"out": a.out, "cases": len(out)}


def cmd_routes(a) -> dict:
    import asyncio

    import utils.install_util  # noqa: F401  ComfyUI's utils package first, as main.py does (else a later plain 'utils' shadows it)
    import server  # ComfyUI's own (main.py creates the PromptServer before loading custom nodes)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server.PromptServer(loop)

    def ours() -> list[str]:
        return sorted(f"{r.method} {r.path}" for r in server.PromptServer.instance.routes
                      if str(getattr(r, "path", "")).startswith("/lcm_lora/"))

    out = {}
    pack = _import_pack(a.repo)
    out["after_import"] = ours()
    extension = loop.run_until_complete(pack.comfy_entrypoint())
    out["after_entrypoint"] = ours()
    loop.run_until_complete(extension.on_load())
    out["after_on_load"] = ours()
    loop.run_until_complete(extension.on_load())
    out["after_second_on_load"] = ours()
    nodes = loop.run_until_complete(extension.get_node_list())
    out["after_get_node_list"] = ours()
    out["nodes"] = [n.GET_SCHEMA().node_id for n in nodes]
    with open(a.out, "w") as f:
        json.dump(out, f)
    return {"out": a.out}


def cmd_facts(a) -> dict:
    import tempfile

    out = a.out
    with tempfile.TemporaryDirectory() as tmp:
        a.out = os.path.join(tmp, "keymaps.json")
        cmd_keymap(a)
        keymaps = json.load(open(a.out))
        a.out = os.path.join(tmp, "sigmas.json")
        first_arch, first_shapes = a.arch.split(",")[0], a.shapes.split(",")[0]
        if first_arch != "sd1":
            raise SystemExit("facts: the first --arch must be sd1 (the sigmas use its model sampling)")
        arch, shapes = a.arch, a.shapes
        a.arch, a.shapes = first_arch, first_shapes
        cmd_sigmas(a)
        a.arch, a.shapes = arch, shapes
        sigmas = json.load(open(a.out))
    with open(out, "w") as f:
        json.dump({"keymaps": keymaps, "sigmas": sigmas}, f)
    return {"out": out}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["checkpoint", "keymap", "sigmas", "facts", "routes"])
    p.add_argument("--comfyui", required=True, help="ComfyUI checkout")
    p.add_argument("--arch", required=True, help="sd1 | sd2 | sdxl | ssd1b (keymap: comma-separated list)")
    p.add_argument("--shapes", required=True, help="JSON {diffusers UNet key: shape}")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repo", help="sigmas: the pack's folder")
    p.add_argument("--cases", help="sigmas: steps,original_steps,denoise;...")
    a = p.parse_args()
    for arch in a.arch.split(","):
        if arch not in EXPECTED_CLASS:
            p.error(f"unknown --arch {arch}")
    _import_comfy(a.comfyui)
    result = {"checkpoint": cmd_checkpoint, "keymap": cmd_keymap, "sigmas": cmd_sigmas, "facts": cmd_facts,
              "routes": cmd_routes}[a.command](a)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
