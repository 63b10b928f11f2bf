"""Adapters distilled without solver guidance ("normal CFG", ``lcd.solver_guidance: false``, PCM's
``--not_apply_cfg_solver``): ``lcd.normal_cfg`` becomes the adapter's ``lcm_lora.recommended_cfg``, a config
error naming the key with guidance on, outside the config hash; ``lcm-lora inspect`` says how to sample it;
``read_recipe`` ignores a recorded cfg that is not a finite number >= 0."""
from __future__ import annotations

import json

import pytest
import torch

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.lcm_core.lora import LoraAdapter, LoraModule, read_adapter, write_adapter
from lcm_lora.lcm_core.sampling_recipe import read_recipe, recipe_for_objective
from lcm_lora.training.config import config_hash, load_config, trajectory_dict
from lcm_lora.training.config_schema import schema_text
from lcm_lora.training.export import adapter_recipe, training_metadata

NORMAL = ["lcd.objective=pcm", "lcd.solver_guidance=false"]


def test_normal_cfg_becomes_the_recommended_cfg():
    default = load_config({}, NORMAL)
    assert default.lcd.normal_cfg == 7.5 and adapter_recipe(default).cfg == 7.5  # PCM's demo value, as before
    cfg = load_config({}, [*NORMAL, "lcd.normal_cfg=2"])
    recipe = adapter_recipe(cfg)
    assert (recipe.objective, recipe.cfg, recipe.w_range, recipe.phases, recipe.steps) == ("pcm", 2.0, None, 4, 4)
    md = training_metadata("sd1", 4, 4.0, 10, config_hash(cfg), cfg)
    assert md["lcm_lora.recommended_cfg"] == "2.0" and md["lcm_lora.solver_guidance"] == "false"
    assert "lcm_lora.w_range" not in md
    assert read_recipe(md).cfg == 2.0
    # every objective: LCM / TCD normal-CFG adapters record it too; guided ones keep cfg 1
    for objective in ("lcm", "tcd", "tscd"):
        over = [f"lcd.objective={objective}", "lcd.solver_guidance=false", "lcd.normal_cfg=5"]
        assert read_recipe(training_metadata("sd1", 4, 4.0, 10, "h", load_config({}, over))).cfg == 5.0, objective
        assert adapter_recipe(load_config({}, [f"lcd.objective={objective}"])).cfg == 1.0, objective


def test_normal_cfg_is_not_part_of_the_config_hash():
    base = load_config({}, NORMAL)
    two = load_config({}, [*NORMAL, "lcd.normal_cfg=2"])
    assert config_hash(base) == config_hash(two)
    assert "normal_cfg" not in trajectory_dict(two)["lcd"]
    # a config that never heard of the key hashes as before: the trajectory dict holds no trace of it
    guided = load_config({}, [])
    assert "normal_cfg" not in json.dumps(trajectory_dict(guided))


@pytest.mark.parametrize("overrides,needle", [
    (["lcd.normal_cfg=2"], "applies to 'lcd.solver_guidance: false' only"),
    (["lcd.objective=pcm", "lcd.normal_cfg=5"], "applies to 'lcd.solver_guidance: false' only"),
    ([*NORMAL, "lcd.normal_cfg=1"], "must be a finite cfg > 1"),
    ([*NORMAL, "lcd.normal_cfg=0.5"], "must be a finite cfg > 1"),
    ([*NORMAL, "lcd.normal_cfg=nan"], "must be a finite cfg > 1"),
    ([*NORMAL, "lcd.normal_cfg=inf"], "must be a finite cfg > 1"),
    ([*NORMAL, "lcd.normal_cfg=high"], "must be a number"),
])
def test_bad_normal_cfg_is_an_error_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config({}, overrides)
    assert "lcd.normal_cfg" in str(e.value) and needle in str(e.value), str(e.value)


def test_schema_lists_normal_cfg():
    line = next(x for x in schema_text().splitlines() if x.strip().startswith("normal_cfg:"))
    assert line.startswith("  normal_cfg: 7.5  # solver_guidance false only"), line


def _adapter(path, metadata):
    g = torch.Generator().manual_seed(0)
    modules = {"unet.down_blocks.0.attentions.0.proj_in": LoraModule(torch.randn(4, 32, generator=g),
                                                                     torch.randn(32, 4, generator=g), 4.0)}
    write_adapter(LoraAdapter(modules=modules), path, extra_metadata=metadata)
    return path


def test_inspect_says_how_to_sample_a_normal_cfg_adapter(tmp_path, capsys):
    from lcm_lora.cli.main import main

    cfg = load_config({}, [*NORMAL, "lcd.normal_cfg=2", "lcd.phases=2"])
    path = _adapter(tmp_path / "normal.safetensors", training_metadata("sd1", 4, 4.0, 10, config_hash(cfg), cfg))
    assert read_adapter(path).metadata["lcm_lora.recommended_cfg"] == "2.0"
    assert main(["inspect", "--allow-unknown-arch", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("objective:     pcm (sampler tcd, 2 steps, 2 phases, timesteps 999/499, gamma 0, "
            "cfg 2 (normal CFG: sample with cfg > 1, negative prompts work))") in out, out
    assert main(["inspect", "--json", "--allow-unknown-arch", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sampling_recipe"]["cfg"] == 2.0 and info["sampling_recipe"]["w_range"] is None

    guided = load_config({}, ["lcd.objective=pcm", "lcd.phases=2"])
    path = _adapter(tmp_path / "guided.safetensors", training_metadata("sd1", 4, 4.0, 10, "h", guided))
    assert main(["inspect", "--allow-unknown-arch", str(path)]) == 0
    out = capsys.readouterr().out
    assert "gamma 0, cfg 1, w 3-15)" in out and "normal CFG" not in out, out


@pytest.mark.parametrize("text,expected", [("2.5", 2.5), (" 7 ", 7.0), ("0", 0.0), ("nan", 1.0), ("inf", 1.0),
                                           ("-3", 1.0), ("1e400", 1.0)])
def test_read_recipe_takes_only_a_finite_cfg(text, expected):
    md = recipe_for_objective("pcm").to_metadata()
    md["lcm_lora.recommended_cfg"] = text
    assert read_recipe(md).cfg == expected


def test_normal_cfg_may_change_on_resume(tmp_path):
    """Metadata only: a resumed run takes a new lcd.normal_cfg (any trajectory key would be refused)."""
    from pathlib import Path

    from lcm_lora.training.trainer import train
    from tiny_training import tiny_teacher_and_data

    teacher, data = tiny_teacher_and_data(tmp_path, n=8, size=16)
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    over = [f"teacher={teacher}", f"data={data}", "batch_size=4", "lora.rank=4", "lora.alpha=4", "validation.every=0",
            "checkpoint.every=0", "logging.progress=false", f"data.cache_dir={tmp_path / 'cache'}", *NORMAL]
    from lcm_lora.training import validation

    calls, real = [], validation.sample_student

    def spy(*args, **kwargs):
        calls.append((kwargs.get("guidance"), kwargs.get("uncond") is not None))
        return real(*args, **kwargs)

    validation.sample_student = spy  # run_validation looks it up in its module
    try:  # validation after the encoders were released (tiny config: both caches on): the stored uncond embedding
        first = train(tiny, tmp_path / "run", overrides=[*over, "max_steps=2", "lcd.normal_cfg=2", "validation.every=2",
                                                         "validation.steps=[1]"], progress=False)
    finally:
        validation.sample_student = real
    assert calls == [(2.0, True)], calls  # the validation grid of a normal-CFG run is sampled at its cfg
    assert (tmp_path / "run" / "validation" / "step-00000002.png").exists()
    assert read_adapter(first.adapter_path).metadata["lcm_lora.recommended_cfg"] == "2.0"
    resumed = train(tiny, tmp_path / "run", overrides=[*over, "max_steps=3", "lcd.normal_cfg=3"], progress=False, resume=True)
    md = read_adapter(resumed.adapter_path).metadata
    assert (resumed.status, md["lcm_lora.recommended_cfg"], md["lcm_lora.steps"]) == ("finished", "3.0", "3")
    with pytest.raises(ConfigError, match="different configuration"):  # the check itself is on: a trajectory key
        train(tiny, tmp_path / "run", overrides=[*over, "max_steps=4", "lcd.phases=2"], progress=False, resume=True)


@pytest.mark.parametrize("variant", ["sd", "sdxl"])  # sdxl: pooled embeddings and time ids doubled too
def test_guided_validation_sample_is_affine_in_the_cfg(tmp_path, variant):
    """ComfyUI's / diffusers' CFG ε = ε_u + g·(ε_c − ε_u): one deterministic TCD step (γ 0, PCM edge 999, then
    diffusers' last step to timestep 0) is affine in ε, so the guided sample is R_u + g·(R_c − R_u) with R_c / R_u
    the plain samples of the prompt / the unconditional embedding (closed form; the ω convention
    cond + g·(cond − uncond) or a guidance left out would both fail it)."""
    from lcm_lora.lcm_core.sampling_recipe import recipe_for_objective, recipe_timesteps
    from lcm_lora.training.ddim_solver import DDIMSolver
    from lcm_lora.training.teacher import load_teacher
    from lcm_lora.training.tiny_models import build_tiny_teacher
    from lcm_lora.training.validation import sample_student

    from contextlib import nullcontext

    torch.set_num_threads(1)
    cfg = load_config({}, [f"teacher={build_tiny_teacher(tmp_path / 'teacher', block_out_channels=(16, 32), variant=variant)}"])
    teacher = load_teacher(cfg.teacher)
    teacher.decode = lambda latents: latents  # compare latents (decode clamps)
    solver = DDIMSolver(teacher.noise_scheduler.alphas_cumprod, 50)
    prompts = ["a red square", "a blue circle"]
    text = teacher.encode_text(prompts, "cpu")
    uncond = teacher.uncond_text("empty_prompt", "cpu")
    uncond_rows = {k: v.expand(len(prompts), *v.shape[1:]) for k, v in uncond.items()}
    ts = recipe_timesteps(recipe_for_objective("pcm", phases=4), 1)
    assert ts == [999]

    def run(txt, **kw):
        return sample_student(teacher, teacher.unet, prompts, 1, 16, 3, "cpu", nullcontext, solver, objective="tcd",
                              gamma=0.0, text=txt, timesteps=ts, **kw).double()

    r_c, r_u = run(text), run(uncond_rows)
    assert (r_c - r_u).norm() / r_c.norm() > 1e-3  # the prompt matters
    assert torch.equal(run(text, guidance=1.0, uncond=uncond), r_c)  # cfg 1: the unguided path, bit for bit
    for g in (2.0, 7.5):
        guided = run(text, guidance=g, uncond=uncond)
        ref = r_u + g * (r_c - r_u)
        assert float((guided - ref).norm() / ref.norm()) < 1e-5, g


def test_shipped_normal_cfg_config_is_pcm_sd15_without_solver_guidance():
    """``configs/pcm_normal_cfg_sd15.yaml`` (the trainer panel lists it): ``pcm_sd15.yaml`` plus PCM's normal-CFG
    recipe (``--not_apply_cfg_solver``, 10 % empty captions) and nothing else changed but the unused ω range;
    its adapter recommends cfg 7.5 and records no ω range."""
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    guided, normal = load_config(configs / "pcm_sd15.yaml"), load_config(configs / "pcm_normal_cfg_sd15.yaml")
    assert (normal.lcd.objective, normal.lcd.solver_guidance, normal.data.caption_dropout, normal.lcd.normal_cfg) == (
        "pcm", False, 0.1, 7.5)
    differ = {(section, key) for section in ("data", "lcd", "lora", "optim", "train", "validation", "output")
              for key, value in vars(getattr(guided, section)).items() if getattr(getattr(normal, section), key) != value}
    assert differ == {("data", "caption_dropout"), ("lcd", "solver_guidance"), ("lcd", "w_min"), ("lcd", "w_max")}
    recipe = adapter_recipe(normal)
    assert (recipe.objective, recipe.cfg, recipe.w_range, recipe.phases) == ("pcm", 7.5, None, 4)
