"""The trainer panel's routes on a real ComfyUI server: train, watch, cancel, and refuse bad requests.

* A tiny job (tiny diffusers teacher in ComfyUI's ``diffusers`` folder, 16 images from ComfyUI's
  input folder) is started over HTTP and polled: loss events appear while it runs, validation
  grids are served, it ends ``done`` and its adapter is in ComfyUI's ``loras`` folder — listed by
  ComfyUI itself (``/object_info`` LoraLoader, ``/models/loras``) and every key is one that
  ComfyUI's LoraLoader key map (``comfy.lora.model_lora_keys_unet``, SD1.5) accepts.
* A long job is cancelled: status ``cancelled``, a checkpoint saved, the process gone.
* Path traversal (``..``, absolute, NUL, symlinks out of the folders), oversized and malformed
  bodies, wrong types: 4xx with a message naming the problem, nothing created anywhere, and the
  server still runs a prompt afterwards.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path

import pytest

import comfy_harness as H

pytest.register_assert_rewrite("trainer_panel_env")
from trainer_panel_env import CONFIG, DATA, TEACHER, TINY_OVERRIDES, tree_snapshot  # noqa: E402

pytest_plugins = ("trainer_panel_env",)
pytestmark = pytest.mark.comfyui
ROOT = Path(__file__).resolve().parents[2]


def _events(panel, job_id, since=0):
    status, out = panel.get(f"/lcm_lora/train/jobs/{job_id}/events?since={since}")
    assert status == 200, out
    return out


# ------------------------------------------------------------------ registration
ROUTES = ["GET /lcm_lora/train/jobs", "GET /lcm_lora/train/jobs/{job_id}", "GET /lcm_lora/train/jobs/{job_id}/events",
          "GET /lcm_lora/train/jobs/{job_id}/images/{name}", "GET /lcm_lora/train/options", "POST /lcm_lora/train/jobs",
          "POST /lcm_lora/train/jobs/{job_id}/cancel"]


def test_routes_are_added_in_on_load_not_at_import(tmp_path):
    """On ComfyUI's real PromptServer: importing the pack and calling comfy_entrypoint() add no route;
    ComfyExtension.on_load adds the seven, once (a second call changes nothing); get_node_list (which
    ComfyUI 0.3.64 calls, while it never calls on_load) leaves them registered. The served routes
    are exercised by every other test here."""
    env = H.comfy_env()
    if isinstance(env, str):
        pytest.skip(env)
    comfy_path, python = env
    out = tmp_path / "routes.json"
    H.run_comfy_side(comfy_path, python, "routes", "--arch", "sd1", "--shapes", "-", "--out", str(out), "--repo", str(ROOT))
    seen = json.loads(out.read_text())
    assert seen["after_import"] == [] and seen["after_entrypoint"] == [], seen
    assert seen["after_on_load"] == ROUTES, seen["after_on_load"]
    assert seen["after_second_on_load"] == ROUTES and seen["after_get_node_list"] == ROUTES
    from test_comfy_registration import NODES

    assert sorted(seen["nodes"]) == sorted(NODES)  # get_node_list still gives every node of the pack


# ------------------------------------------------------------------ listing
def test_options_list_only_what_lies_inside_comfyui_folders(panel):
    status, opts = panel.get("/lcm_lora/train/options")
    assert status == 200, opts
    assert opts["configs"] == sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    teachers = {(t["type"], t["name"]) for t in opts["teachers"]}
    assert ("diffusers", TEACHER) in teachers
    assert not any("escape" in name for _, name in teachers), teachers  # symlinks out of the model folders
    assert DATA in opts["data_folders"] and "escape_data" not in opts["data_folders"]
    from lcm_lora.training.config_panel import panel_overrides

    assert opts["overrides"] == json.loads(json.dumps(panel_overrides()))  # the trainer's schema, as JSON
    assert opts["normal_cfg_configs"] == _normal_cfg_configs_by_yaml() and NORMAL_CFG_CONFIG in opts["normal_cfg_configs"]


NORMAL_CFG_CONFIG = "pcm_normal_cfg_sd15.yaml"


def _normal_cfg_configs_by_yaml() -> dict:
    """The shipped configs with ``lcd.solver_guidance: false`` and their ``lcd.normal_cfg``, read as plain YAML."""
    import yaml

    out = {}
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        lcd = yaml.safe_load(path.read_text(encoding="utf-8")).get("lcd") or {}
        if lcd.get("solver_guidance", True) is False:
            out[path.name] = float(lcd.get("normal_cfg", 7.5))
    return out


# ------------------------------------------------------------------ a finished job
def test_job_streams_loss_and_ends_done(panel, finished_job):
    final = finished_job["final"]
    assert final["status"] == "done", final
    # the polls saw the job running with a loss before it ended (live progress)
    assert any(s == "running" and step > 0 and loss is not None for s, step, loss in finished_job["seen"]), finished_job["seen"]
    events = _events(panel, final["id"])["events"]
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, TINY_OVERRIDES["max_steps"] + 1))
    assert all(math.isfinite(e["loss"]) for e in steps)
    # the route's loss series is the trainer's own CSV log
    run = panel.jobs_root / final["id"] / "run"
    rows = list(csv.DictReader(io.StringIO((run / "metrics.csv").read_text())))
    assert [int(r["step"]) for r in rows] == [e["step"] for e in steps]
    assert all(abs(float(r["loss"]) - e["loss"]) <= 1e-6 * max(1.0, abs(e["loss"])) for r, e in zip(rows, steps))
    # incremental polling: since=N returns exactly the tail
    tail = _events(panel, final["id"], since=len(events) - 3)
    assert tail["events"] == events[-3:] and tail["next"] == len(events)
    assert events[-1]["event"] == "end" and events[-1]["status"] == "finished"
    # the job ran the trainer on its own merged config.yaml (no key=value arguments): the trainer's loader reads it back
    from lcm_lora.training.config import load_config

    folder = panel.jobs_root / final["id"]
    cfg = load_config(folder / "config.yaml")
    assert (cfg.train.max_steps, cfg.lora.rank, cfg.optim.learning_rate) == (8, 4, 1e-3)
    cmd = final["request"]["command"]
    assert cmd[3:] == ["--config", cmd[4], "--output", cmd[6], "--no-progress"], cmd
    assert Path(cmd[4]).resolve() == (folder / "config.yaml").resolve() and Path(cmd[6]).resolve() == run.resolve()


def test_validation_images_are_served_from_the_job_folder(panel, finished_job):
    from PIL import Image

    final = finished_job["final"]
    folder = panel.jobs_root / final["id"] / "run" / "validation"
    every, max_steps = TINY_OVERRIDES["validation_every"], TINY_OVERRIDES["max_steps"]
    expected = [f"step-{s:08d}.png" for s in range(every, max_steps + 1, every)]
    assert final["images"] == expected == sorted(os.listdir(folder))
    status, png = panel.get(f"/lcm_lora/train/jobs/{final['id']}/images/{expected[-1]}")
    assert status == 200 and png == (folder / expected[-1]).read_bytes()
    img = Image.open(io.BytesIO(png))
    from lcm_lora.training.validation import grid_geometry

    events = [json.loads(line) for line in (folder.parent / "events.jsonl").read_text().splitlines() if line.strip()]
    prompts = [e for e in events if e["event"] == "validation"][-1]["prompts"]  # tiny_cpu.yaml: captions of the data
    assert 1 <= len(prompts) <= 4
    # columns: prompts, rows: validation steps; 16 px images enlarged and labelled
    assert img.size == grid_geometry(len(TINY_OVERRIDES["validation_steps"]), len(prompts), 16, 16)["size"]


def test_adapter_is_published_to_comfyui_loras(panel, finished_job, tmp_path):
    from safetensors import safe_open

    final = finished_job["final"]
    name = final["lora_name"]
    assert name == "tiny lcm.safetensors"
    published = panel.loras / name
    assert published.read_bytes() == (panel.jobs_root / final["id"] / "run" / "adapter.safetensors").read_bytes()
    # ComfyUI lists it where LoraLoader picks adapters
    assert name in panel.object_info("LoraLoader")["LoraLoader"]["input"]["required"]["lora_name"][0]
    assert name in panel.server.get_json("/models/loras")
    # every key is one ComfyUI's LoraLoader maps onto an SD1.5 UNet (kohya names; the tiny UNet's
    # modules are a subset of SD1.5's), i.e. nothing would be reported as "lora key not loaded"
    shapes = H.diffusers_unet_shapes("sd1", tmp_path / "sd1_unet_shapes.json")
    comfy_path, python = H.comfy_env()
    H.run_comfy_side(comfy_path, python, "keymap", "--arch", "sd1", "--shapes", str(shapes), "--out", str(tmp_path / "km.json"))
    keymap = json.loads((tmp_path / "km.json").read_text())["sd1"]["unet"]
    with safe_open(published, "pt") as f:
        modules = {k.rsplit(".", 2)[0] if k.endswith((".lora_up.weight", ".lora_down.weight")) else k.rsplit(".", 1)[0] for k in f.keys()}
    assert modules and all(m.startswith("lora_unet_") for m in modules)
    unknown = sorted(m for m in modules if m not in keymap)
    assert not unknown, unknown[:5]


def test_existing_lora_name_is_never_overwritten(panel, finished_job):
    before = (panel.loras / finished_job["final"]["lora_name"]).read_bytes()
    status, out = panel.post("/lcm_lora/train/jobs", dict(config=CONFIG, teacher=TEACHER, teacher_type="diffusers", data=DATA,
                                                           output_name="tiny lcm", overrides=TINY_OVERRIDES))
    assert status == 409 and "already exists" in out["error"], out
    assert (panel.loras / finished_job["final"]["lora_name"]).read_bytes() == before


def test_failed_run_reports_the_trainer_error(panel, finished_job):
    loras_before = sorted(os.listdir(panel.loras))
    job = panel.start(config=CONFIG, teacher="broken", teacher_type="diffusers", data=DATA, output_name="broken lcm",
                      overrides={"max_steps": 2})
    final = panel.wait(job["id"], timeout=300)
    assert final["status"] == "failed" and final["returncode"] not in (0, None), final
    assert "broken" in final["message"], final["message"]  # the trainer's error names the teacher folder
    assert sorted(os.listdir(panel.loras)) == loras_before


@pytest.mark.filterwarnings("ignore:.*adamw8bit is not usable here:UserWarning")  # the shipped PCM config's optimizer
def test_normal_cfg_reaches_the_jobs_config(panel, finished_job):
    """The normal-CFG config with the panel's ``normal_cfg`` 3: the job's config.yaml (what the trainer runs)
    has lcd.normal_cfg 3.0 and otherwise the shipped config's trajectory (the key is outside the config
    hash). The tiny teacher is no SD1.5 checkpoint (the config says ``teacher.arch: sd1``), so the run stops
    at the trainer's architecture check; the adapter it writes is the slow test below."""
    from lcm_lora.training.config import config_hash, load_config

    over = {"normal_cfg": 3, "max_steps": 1, "batch_size": 1, "rank": 4, "resolution": 64, "validation_every": 0,
            "checkpoint_every": 0, "device": "cpu"}
    job = panel.start(config=NORMAL_CFG_CONFIG, teacher=TEACHER, teacher_type="diffusers", data=DATA,
                      output_name="tiny normal cfg", overrides=over)
    try:
        cfg = load_config(panel.jobs_root / job["id"] / "config.yaml")
        assert (cfg.lcd.solver_guidance, cfg.lcd.normal_cfg, cfg.lcd.objective) == (False, 3.0, "pcm")
        assert job["request"]["overrides"] == over
        same = load_config(cfg, ["lcd.normal_cfg=7.5"])  # the shipped cfg: same trajectory
        assert config_hash(same) == config_hash(cfg) and load_config(ROOT / "configs" / NORMAL_CFG_CONFIG).lcd == same.lcd
    finally:
        final = panel.wait(job["id"], timeout=300)
    assert final["status"] == "failed" and "architecture" in final["message"], final  # (see the docstring)
    assert not (panel.loras / "tiny normal cfg.safetensors").exists()


# ------------------------------------------------------------------ cancel
def test_cancel_saves_a_checkpoint_and_stops_the_process(panel, finished_job):
    """A long prompts-only run (the teacher makes its own training images first), cancelled after its first step."""
    loras_before = sorted(os.listdir(panel.loras))
    prompts = ["a red circle", "# a blue square,\u2028on a dark background ", " a #3 digit"]  # read back exactly
    job = panel.start(config=CONFIG, teacher=TEACHER, teacher_type="diffusers", prompts=prompts, output_name="never published",
                      overrides={"max_steps": 100000, "batch_size": 4, "rank": 4, "validation_every": 0, "checkpoint_every": 0,
                                 "samples_per_prompt": 2})
    panel.wait(job["id"], until=lambda j: j["step"] >= 1, timeout=300)
    folder = panel.jobs_root / job["id"]
    from lcm_lora.training.data import read_prompts

    assert read_prompts(folder / "prompts.jsonl") == prompts
    import yaml

    run_cfg = yaml.safe_load((folder / "run" / "config.yaml").read_text())
    assert run_cfg["data"]["prompts"] == str(folder / "prompts.jsonl") and run_cfg["data"]["path"] is None
    assert any((folder / "run" / "teacher_samples").rglob("*")), "prompts-only mode made no teacher samples"
    status, out = panel.post(f"/lcm_lora/train/jobs/{job['id']}/cancel", {})
    assert status == 200 and out["status"] in ("cancelling", "cancelled"), out
    final = panel.wait(job["id"], timeout=120)
    assert final["status"] == "cancelled", final
    end = _events(panel, job["id"])["events"][-1]
    assert end["event"] == "end" and end["status"] == "interrupted", end
    ckpt = Path(end["checkpoint"])
    assert ckpt.exists() and ckpt.is_relative_to(panel.jobs_root / job["id"] / "run")
    assert final["checkpoints"] and final["returncode"] == 130, final  # trainer's "interrupted, checkpoint saved" exit
    with pytest.raises(ProcessLookupError):
        os.kill(job["pid"], 0)
    assert sorted(os.listdir(panel.loras)) == loras_before
    status, out = panel.post(f"/lcm_lora/train/jobs/{job['id']}/cancel", {})
    assert status == 409 and "cancelled" in out["error"]


# ------------------------------------------------------------------ refused requests
GOOD = dict(config=CONFIG, teacher=TEACHER, teacher_type="diffusers", data=DATA, output_name="x", overrides={"max_steps": 1})
BAD_BODIES = [
    ("teacher ..", dict(GOOD, teacher="../../models/diffusers/tiny-sd"), 400, "'..'"),
    ("teacher absolute", dict(GOOD, teacher="/etc"), 400, "absolute"),
    ("teacher windows absolute", dict(GOOD, teacher="C:\\models\\x"), 400, "absolute"),
    ("teacher NUL", dict(GOOD, teacher="tiny-sd\x00"), 400, "control character"),
    ("teacher symlink out", dict(GOOD, teacher="escape"), 400, "symbolic link"),
    ("checkpoint symlink out", dict(GOOD, teacher="escape.safetensors", teacher_type="checkpoint"), 400, "symbolic link"),
    ("teacher missing", dict(GOOD, teacher="nope"), 404, "not a folder"),
    ("data ..", dict(GOOD, data="../input/tiny_shapes"), 400, "'..'"),
    ("data absolute", dict(GOOD, data="/tmp"), 400, "absolute"),
    ("data symlink out", dict(GOOD, data="escape_data"), 400, "symbolic link"),
    ("link inside data", dict(GOOD, data="sneaky"), 400, "'leak.png' inside 'sneaky' is a symbolic link"),
    ("output ..", dict(GOOD, output_name="../checkpoints/evil"), 400, "'..'"),
    ("output absolute", dict(GOOD, output_name="/tmp/evil"), 400, "absolute"),
    ("output folder", dict(GOOD, output_name="sub/evil"), 400, "plain file name"),
    ("output symlink out", dict(GOOD, output_name="escape"), 400, "outside"),
    ("config ..", dict(GOOD, config="../pyproject.toml"), 400, "'..'"),
    ("config unknown", dict(GOOD, config="other.yaml"), 404, "shipped configs"),
    ("wrong type max_steps", dict(GOOD, overrides={"max_steps": "12"}), 400, "integer"),
    ("bool as int", dict(GOOD, overrides={"rank": True}), 400, "integer"),
    ("out of range", dict(GOOD, overrides={"max_steps": 0}), 400, "key 'train.max_steps' must be >= 1"),
    ("unknown override", dict(GOOD, overrides={"teacher.path": "/etc"}), 400, "unknown override"),
    ("unknown field", dict(GOOD, python="/bin/sh"), 400, "unknown field"),
    ("teacher not string", dict(GOOD, teacher=["tiny-sd"]), 400, "must be a string"),
    ("data and prompts", dict(GOOD, prompts=["a cat"]), 400, "exactly one"),
    ("prompts not list", dict({k: v for k, v in GOOD.items() if k != "data"}, prompts="a cat"), 400, "list"),
    ("body not object", [1, 2], 400, "JSON object"),
    ("missing field", {k: v for k, v in GOOD.items() if k != "teacher"}, 400, "missing field 'teacher'"),
    # normal_cfg: configs with lcd.solver_guidance false only (the trainer's message), within the panel's bounds
    ("normal_cfg on a guided config", dict(GOOD, overrides={"normal_cfg": 3}), 400,
     "key 'lcd.normal_cfg' applies to 'lcd.solver_guidance: false' only"),
    ("normal_cfg 1", dict(GOOD, config=NORMAL_CFG_CONFIG, overrides={"normal_cfg": 1}), 400, "key 'lcd.normal_cfg' must be >= 1.01"),
    ("normal_cfg 31", dict(GOOD, config=NORMAL_CFG_CONFIG, overrides={"normal_cfg": 31}), 400, "key 'lcd.normal_cfg' must be <= 30"),
    ("normal_cfg text", dict(GOOD, config=NORMAL_CFG_CONFIG, overrides={"normal_cfg": "7"}), 400,
     "key 'lcd.normal_cfg' must be a number"),
]


@pytest.mark.parametrize("case", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_start_requests_are_refused(panel, case):
    _, body, code, fragment = case
    status, out = panel.post("/lcm_lora/train/jobs", body)
    assert status == code, out
    assert fragment in out["error"], out


RAW_BODIES = [
    ("invalid JSON", b'{"config": "tiny_cpu.yaml",', "application/json", 400, "not valid JSON"),
    ("NaN constant", b'{"config": NaN}', "application/json", 400, "not valid JSON"),
    ("not UTF-8", b'{"config": "\xff\xfe"}', "application/json", 400, "UTF-8"),
    ("oversized", b'{"prompts": ["' + b"a" * (70 * 1024) + b'"]}', "application/json", 413, "limit"),
    ("form post", b"config=tiny_cpu.yaml", "application/x-www-form-urlencoded", 415, "application/json"),
    ("deep nesting", b"[" * 100000 + b"]" * 100000, "application/json", 413, "limit"),
    ("deep nesting small", b"[" * 30000 + b"]" * 30000, "application/json", 400, "JSON"),
]


@pytest.mark.parametrize("case", RAW_BODIES, ids=[c[0] for c in RAW_BODIES])
def test_malformed_bodies_are_refused(panel, case):
    _, raw, ctype, code, fragment = case
    status, out = panel.request("POST", "/lcm_lora/train/jobs", raw, content_type=ctype)
    assert status == code, out
    assert fragment in out["error"], out


def test_chunked_oversized_body_is_refused(panel):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", panel.port, timeout=30)
    conn.putrequest("POST", "/lcm_lora/train/jobs")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b" " * 8192
    try:
        for _ in range(12):  # 96 KiB, no Content-Length
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    resp = conn.getresponse()
    assert resp.status == 413, resp.read()
    conn.close()


BAD_GETS = [
    ("/lcm_lora/train/jobs/..%2F..%2Fetc", 404),
    ("/lcm_lora/train/jobs/not-a-job/events", 404),
    ("/lcm_lora/train/jobs/20990101-000000-abcdef", 404),
]


@pytest.mark.parametrize("path,code", BAD_GETS)
def test_bad_job_ids_are_refused(panel, path, code):
    status, out = panel.get(path)
    assert status == code


def test_image_names_are_confined_to_the_job_folder(panel, finished_job):
    job_id = finished_job["final"]["id"]
    run = panel.jobs_root / job_id / "run"
    os.symlink(panel.outside / "img.png", run / "validation" / "step-99999999.png")
    for name, code in [("..%2F..%2Fjob.json", 400), ("%2Fetc%2Fpasswd", 400), ("config.yaml", 400),
                       ("step-00000001.png", 404), ("step-99999999.png", 400)]:
        status, out = panel.get(f"/lcm_lora/train/jobs/{job_id}/images/{name}")
        assert status == code, (name, out)
    status, out = panel.get(f"/lcm_lora/train/jobs/{job_id}/events?since=-1")
    assert status == 400 and "since" in out["error"]


def test_refusals_touch_nothing_and_server_still_runs_prompts(panel, finished_job):
    """Runs after the refusal tests (file order): nothing outside, no stray jobs, no stray adapters."""
    outside = tree_snapshot(panel.outside)
    loras = sorted(os.listdir(panel.loras))
    jobs = sorted(os.listdir(panel.jobs_root))
    for _, body, _, _ in BAD_BODIES:
        panel.post("/lcm_lora/train/jobs", body)
    assert tree_snapshot(panel.outside) == outside
    assert sorted(os.listdir(panel.loras)) == loras
    assert sorted(os.listdir(panel.jobs_root)) == jobs
    assert not (panel.outside / "planted.safetensors").exists()
    prompt = {
        "img": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["img", 0], "filename_prefix": f"alive_{int(time.time())}"}},
    }
    result = panel.server.run(prompt, timeout=120)
    assert result.status == "success", result.message()
    assert result.images()


# ------------------------------------------------------------------ full size (slow)
def _sd15_teacher(panel, sd15_checkpoint) -> str:
    name = "sd15-panel-teacher.safetensors"
    target = panel.checkpoints / name
    if not target.exists():  # a hard link (a symlink out of the folder would be refused, by design)
        try:
            os.link(sd15_checkpoint, target)
        except OSError:
            import shutil

            shutil.copyfile(sd15_checkpoint, target)
    return name


@pytest.mark.slow
def test_normal_cfg_job_writes_the_panels_recommended_cfg(panel, sd15_checkpoint):
    """The normal-CFG config from the panel with ``normal_cfg`` 3 on a full-size SD1.5 checkpoint, one step:
    the published adapter records ``lcm_lora.recommended_cfg`` "3.0" (and no ω range), which the nodes follow."""
    from safetensors import safe_open

    from lcm_lora.lcm_core.sampling_recipe import read_recipe

    name = _sd15_teacher(panel, sd15_checkpoint)
    job = panel.start(config=NORMAL_CFG_CONFIG, teacher=name, teacher_type="checkpoint", data=DATA, output_name="sd15 panel normal cfg",
                      overrides={"normal_cfg": 3, "max_steps": 1, "batch_size": 1, "rank": 4, "resolution": 64, "validation_every": 0,
                                 "checkpoint_every": 0, "device": "cpu", "mixed_precision": "bf16"})
    final = panel.wait(job["id"], timeout=1500)
    assert final["status"] == "done", final
    with safe_open(panel.loras / final["lora_name"], "pt") as f:
        md = f.metadata()
    assert md["lcm_lora.recommended_cfg"] == "3.0" and md["lcm_lora.solver_guidance"] == "false", md
    assert "lcm_lora.w_range" not in md and read_recipe(md).cfg == 3.0


@pytest.mark.slow
def test_sd15_checkpoint_from_comfyui_trains_and_loads_in_loraloader(panel, sd15_checkpoint):
    """The real flow: a full-size SD1.5 single file from ComfyUI's checkpoints folder → one step
    through the panel → the adapter in ComfyUI's stock LoraLoader on that same checkpoint, with no
    "lora key not loaded" and no shape-mismatch warnings while ComfyUI patches the weights."""
    name = _sd15_teacher(panel, sd15_checkpoint)
    _, opts = panel.get("/lcm_lora/train/options")
    assert {"type": "checkpoint", "name": name} in opts["teachers"]
    job = panel.start(config="sd15.yaml", teacher=name, teacher_type="checkpoint", data=DATA, output_name="sd15 panel lcm",
                      overrides={"max_steps": 1, "batch_size": 1, "rank": 4, "resolution": 64, "validation_every": 0,
                                 "checkpoint_every": 0, "device": "cpu", "mixed_precision": "bf16"})
    final = panel.wait(job["id"], timeout=1500)
    assert final["status"] == "done", final
    lora = final["lora_name"]
    offset = panel.server.log_size()
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
        "lora": {"class_type": "LoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1], "lora_name": lora,
                                                         "strength_model": 1.0, "strength_clip": 1.0}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["lora", 1], "text": "a cat"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {"model": ["lora", 0], "positive": ["pos", 0], "negative": ["pos", 0],
                                                    "latent_image": ["latent", 0], "seed": 0, "steps": 1, "cfg": 1.0,
                                                    "sampler_name": "lcm", "scheduler": "simple", "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0], "filename_prefix": "panel_sd15"}},
    }
    result = panel.server.run(prompt, timeout=900)
    assert result.status == "success", result.message()
    log = panel.server.log_since(offset)
    assert "lora key not loaded" not in log and "NOT LOADED" not in log, log[-3000:]
    assert "SHAPE MISMATCH" not in log and "ERROR lora" not in log, log[-3000:]
    # and the patch is live: the same graph at strength 0 gives a different latent
    import graphs as G

    prompt["lora"]["inputs"].update(strength_model=0.0, strength_clip=0.0)
    prompt["save"]["inputs"]["filename_prefix"] = "panel_sd15_off"
    off = panel.server.run(prompt, timeout=900)
    assert off.status == "success", off.message()
    on_latent, off_latent = G.saved_latent(panel.output, result), G.saved_latent(panel.output, off)
    assert on_latent.shape == off_latent.shape and not bool((on_latent == off_latent).all())
