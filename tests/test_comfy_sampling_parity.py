"""Schedules, LCM sampling and the LCM boundary vs real ComfyUI (out of process, ComfyUI's own venv).

One script runs under ``$COMFYUI_PYTHON`` with ``$COMFYUI_PATH`` and this repo on ``sys.path``
(``lcm_core`` imported as a top-level package: it never imports ComfyUI and ComfyUI never
enters the project venv), and prints one JSON line of measurements that the tests check:

* ``ModelSamplingDiscrete`` sigmas / ``timestep()`` / ``sigma()`` and the LCM-distilled
  ``ModelSamplingDiscreteDistilled`` vs :mod:`lcm_core.schedule`;
* ComfyUI's ``simple`` scheduler on ``ModelSamplingDiscrete(lcm)`` vs our diffusers-exact LCM
  SIGMAS (and how ComfyUI's KSampler ``denoise`` differs from diffusers' ``strength``);
* ComfyUI's ``sample_lcm`` vs ours with identical fake ε model and seed, directly and via ``KSAMPLER``;
* ComfyUI's ``LCM`` model sampling (boundary on the unscaled input) vs the diffusers convention,
  and a ``ModelSampling`` subclass recipe that makes ComfyUI diffusers-exact.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(r'''
    import inspect, json, math, sys
    comfy_path, repo = sys.argv[1], sys.argv[2]
    sys.path[:0] = [comfy_path, repo]
    import comfy.options
    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    import torch
    torch.set_num_threads(1)
    from types import SimpleNamespace
    import comfy.model_sampling as cms
    import comfy.k_diffusion.sampling as ks
    import comfy.samplers as csamplers
    import comfy_extras.nodes_model_advanced as nma
    from lcm_core.schedule import DiscreteSchedule
    from lcm_core.timesteps import lcm_timesteps, lcm_sigmas, timesteps_to_sigmas
    from lcm_core.denoisers import EpsDenoiser, eps_to_denoised
    from lcm_core.sampling import sample_lcm, sample_tcd
    from lcm_core.boundary import comfyui_minus_diffusers

    R = {}
    def maxdiff(a, b):
        return float((a.double() - b.double()).abs().max())

    class EpsDiscrete(cms.ModelSamplingDiscrete, cms.EPS): pass
    class LcmDistilled(nma.ModelSamplingDiscreteDistilled, nma.LCM): pass

    # Recipe for the nodes: diffusers-exact LCM boundary inside ComfyUI's model sampling.
    class LCMDiffusersExact(cms.EPS):
        def calculate_denoised(self, sigma, model_output, model_input):
            return eps_to_denoised(model_input, sigma, model_output, self.timestep(sigma), boundary="diffusers")
    class LcmDistilledDiffusers(nma.ModelSamplingDiscreteDistilled, LCMDiffusersExact): pass

    eps_ms, lcm_ms, lcm_dx = EpsDiscrete(), LcmDistilled(), LcmDistilledDiffusers()
    ours_c = DiscreteSchedule(convention="comfyui")
    ours_d = DiscreteSchedule()
    dist_c = ours_c.distilled(50)

    # 1. schedule tables and conversions
    R["sigmas_comfy_equal"] = bool(torch.equal(eps_ms.sigmas, ours_c.sigmas))
    R["sigmas_diffusers_rel"] = float((eps_ms.sigmas.double() / ours_d.sigmas.double() - 1).abs().max())
    g = torch.Generator().manual_seed(0)
    probe = torch.cat([ours_c.sigmas, torch.exp(torch.empty(300).uniform_(-4.0, 3.0, generator=g)), torch.tensor([0.0])])
    R["timestep_equal"] = bool(torch.equal(eps_ms.timestep(probe), ours_c.sigma_to_timestep(probe)))
    R["timestep_equal_diffusers_numerics"] = bool(torch.equal(eps_ms.timestep(probe), ours_d.sigma_to_timestep(probe)))
    tprobe = torch.cat([torch.arange(1000).float(), torch.empty(300).uniform_(-10.0, 1010.0, generator=g)])
    R["sigma_maxdiff"] = maxdiff(eps_ms.sigma(tprobe), ours_c.timestep_to_sigma(tprobe))
    R["distilled_sigmas_equal"] = bool(torch.equal(lcm_ms.sigmas, dist_c.sigmas))
    R["distilled_timestep_equal"] = bool(torch.equal(lcm_ms.timestep(probe), dist_c.sigma_to_timestep(probe)))
    R["distilled_sigma_maxdiff"] = maxdiff(lcm_ms.sigma(tprobe), dist_c.timestep_to_sigma(tprobe))

    # 2. ComfyUI schedulers vs diffusers-exact LCM SIGMAS
    R["simple_equal_steps"] = [n for n in range(1, 51)
                               if torch.equal(csamplers.calculate_sigmas(lcm_ms, "simple", n).float(), lcm_sigmas(n, schedule=dist_c))]
    cases, mismatch = 0, []
    for steps in range(1, 11):
        for d in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9):
            try:
                ours = lcm_timesteps(steps, strength=d)
            except Exception:
                continue
            cases += 1
            sig = csamplers.calculate_sigmas(lcm_ms, "simple", int(steps / d))[-(steps + 1):]  # KSampler.set_steps
            theirs = lcm_ms.timestep(sig[:-1]).tolist()
            if theirs != ours:
                mismatch.append([steps, d, ours, theirs])
    R["denoise_cases"], R["denoise_mismatch"] = cases, mismatch

    # 3. sample_lcm parity with a fake ε network behind ComfyUI's BaseModel._apply_model logic
    def eps_fn(x_in, t, **_):
        t = t.float().reshape(-1, 1, 1, 1)
        return torch.tanh(x_in) * 0.8 + 0.1 * torch.cos(2 * x_in + t / 250)

    class FakeModel:  # k-diffusion model: what ComfyUI's sample_lcm receives
        def __init__(self, ms):
            self.ms = ms
            self.inner_model = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=ms))
        def __call__(self, x, sigma, **extra):
            xc = self.ms.calculate_input(sigma, x)
            out = eps_fn(xc, self.ms.timestep(sigma).float()).float()
            return self.ms.calculate_denoised(sigma, out, x)

    class FakeWrap:  # CFGGuider-side model for KSAMPLER.sample
        def __init__(self, ms):
            self.inner_model = SimpleNamespace(model_sampling=ms)
            self.model = FakeModel(ms)
        def __call__(self, x, sigma, model_options={}, seed=None):
            return self.model(x, sigma)

    R["sample_lcm"] = {}
    for n in (1, 2, 4, 8):
        sig = lcm_sigmas(n, schedule=dist_c)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(n)) * (1 + sig[0] ** 2) ** 0.5
        run = lambda f, m: f(m, x.clone(), sig, extra_args={"seed": 42}, disable=True)
        comfy_lcm = run(ks.sample_lcm, FakeModel(lcm_ms))
        R["sample_lcm"][n] = {
            "lcm_vs_ours_comfyui": maxdiff(comfy_lcm, run(sample_lcm, EpsDenoiser(eps_fn, dist_c, "comfyui"))),
            "eps_vs_ours_plain": maxdiff(run(ks.sample_lcm, FakeModel(eps_ms)), run(sample_lcm, EpsDenoiser(eps_fn, ours_c))),
            "recipe_vs_ours_diffusers": maxdiff(run(ks.sample_lcm, FakeModel(lcm_dx)),
                                                run(sample_lcm, EpsDenoiser(eps_fn, dist_c, "diffusers"))),
            "lcm_vs_ours_diffusers": maxdiff(comfy_lcm, run(sample_lcm, EpsDenoiser(eps_fn, dist_c, "diffusers"))),
            "scale": float(comfy_lcm.abs().max()),
        }
    # via KSAMPLER (what the nodes hand to ComfyUI), txt2img: noise_scaling(max_denoise) inside
    sig = lcm_sigmas(4, schedule=dist_c)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    def ksample(sampler):
        return sampler.sample(FakeWrap(lcm_ms), sig, {"seed": 42}, None, noise.clone(), torch.zeros_like(noise), None, True)
    R["ksampler_lcm_vs_ours"] = maxdiff(ksample(csamplers.ksampler("lcm")), ksample(csamplers.KSAMPLER(sample_lcm)))
    tcd_opts = {"gamma": 0.3, "eta": 1.0, "schedule": ours_c}
    direct = sample_tcd(FakeModel(eps_ms), noise * (1 + sig[0] ** 2) ** 0.5, sig, extra_args={"seed": 42}, disable=True, **tcd_opts)
    R["ksampler_tcd_vs_direct"] = maxdiff(csamplers.KSAMPLER(sample_tcd, extra_options=tcd_opts).sample(
        FakeWrap(eps_ms), sig, {"seed": 42}, None, noise.clone(), torch.zeros_like(noise), None, True), direct)

    # 4. boundary conventions per call, against the closed-form gap
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7)) * 3
    class LcmFull(cms.ModelSamplingDiscrete, nma.LCM): pass
    lcm_full = LcmFull()
    R["boundary"] = {}
    for t in (0, 1, 5, 19, 259, 999):
        sigma = ours_c.sigmas[t].expand(2)
        eps = eps_fn(x / (sigma.view(-1, 1, 1, 1) ** 2 + 1) ** 0.5, torch.tensor([t, t]))
        comfy = lcm_full.calculate_denoised(sigma, eps, x)
        ours_comfy = eps_to_denoised(x, sigma, eps, torch.tensor([t, t]), "comfyui")
        ours_diff = eps_to_denoised(x, sigma, eps, torch.tensor([t, t]), "diffusers")
        gap = comfyui_minus_diffusers(x.double(), sigma.double(), torch.tensor([t, t]))
        R["boundary"][t] = {"comfy_vs_ours_comfyui": maxdiff(comfy, ours_comfy),
                            "gap_measured_vs_closed_form": maxdiff(comfy.double() - ours_diff.double(), gap),
                            "gap_max": float(gap.abs().max()), "x_scale": float(x.abs().max())}

    ours_sig, theirs_sig = inspect.signature(sample_lcm), inspect.signature(ks.sample_lcm)
    R["signature_equal"] = [(p.name, p.default) for p in ours_sig.parameters.values()] == \
                           [(p.name, p.default) for p in theirs_sig.parameters.values()]
    R["torch"] = torch.__version__
    print("RESULT " + json.dumps(R))
''')


@pytest.fixture(scope="module")
def comfy():
    path, python = os.environ.get("COMFYUI_PATH"), os.environ.get("COMFYUI_PYTHON")
    if not path or not python:
        pytest.skip("COMFYUI PARITY NOT RUN: set COMFYUI_PATH (ComfyUI 0.3.64 checkout) and COMFYUI_PYTHON "
                    "(its venv's python) to compare schedules and samplers against real ComfyUI")
    if not (Path(path) / "comfy" / "model_sampling.py").is_file() or not Path(python).exists():
        pytest.fail(f"COMFYUI_PATH={path!r} / COMFYUI_PYTHON={python!r} do not point at a ComfyUI checkout and python")
    proc = subprocess.run([python, "-c", SCRIPT, path, str(REPO)], capture_output=True, text=True, timeout=600,
                          cwd=str(REPO))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"ComfyUI script failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_discrete_schedule_matches_model_sampling_discrete(comfy):
    assert comfy["sigmas_comfy_equal"]
    assert comfy["sigmas_diffusers_rel"] < 3e-5  # diffusers' float32 table vs ComfyUI's float64-derived one
    assert comfy["timestep_equal"] and comfy["timestep_equal_diffusers_numerics"]
    assert comfy["sigma_maxdiff"] == 0.0


def test_distilled_schedule_matches_model_sampling_discrete_distilled(comfy):
    assert comfy["distilled_sigmas_equal"] and comfy["distilled_timestep_equal"]
    assert comfy["distilled_sigma_maxdiff"] == 0.0


def test_simple_scheduler_equals_diffusers_lcm_timesteps_at_full_denoise(comfy):
    assert comfy["simple_equal_steps"] == list(range(1, 51))


def test_comfy_denoise_differs_from_diffusers_strength(comfy):
    """KSampler's denoise (int(steps/denoise) steps, keep the tail) is not diffusers' strength.

    Our LCM Scheduler node follows diffusers; this records that ComfyUI's own path differs in
    most img2img cases (e.g. 1 step at denoise 0.6: diffusers t=599, ComfyUI t=999).
    """
    mismatch = comfy["denoise_mismatch"]
    assert comfy["denoise_cases"] > 50 and len(mismatch) > comfy["denoise_cases"] // 3
    assert [1, 0.6, [599], [999]] in mismatch


def test_sample_lcm_matches_comfyui(comfy):
    for n, r in comfy["sample_lcm"].items():
        assert r["lcm_vs_ours_comfyui"] == 0.0, n       # bit-identical to ComfyUI's sample_lcm + LCM sampling
        assert r["eps_vs_ours_plain"] == 0.0, n         # and with plain EPS model sampling
        assert r["recipe_vs_ours_diffusers"] == 0.0, n  # recipe subclass == our diffusers convention
        # diffusers vs ComfyUI boundary over a whole run: below float32 noise at this scale
        assert r["lcm_vs_ours_diffusers"] <= 2e-7 * max(1.0, r["scale"]), n
    assert comfy["ksampler_lcm_vs_ours"] == 0.0
    assert comfy["ksampler_tcd_vs_direct"] == 0.0
    assert comfy["signature_equal"]


def test_lcm_boundary_gap_is_the_closed_form(comfy):
    for t, r in comfy["boundary"].items():
        assert r["comfy_vs_ours_comfyui"] == 0.0, t
        ulp = 2e-7 * r["x_scale"]  # a few float32 ulps of |x|
        assert r["gap_measured_vs_closed_form"] <= max(ulp, 1e-4 * r["gap_max"]), t
    assert comfy["boundary"]["0"]["gap_max"] > 1e-3       # visible at t = 0 ...
    assert comfy["boundary"]["19"]["gap_max"] < 1e-6      # ... invisible on the LCM grid
