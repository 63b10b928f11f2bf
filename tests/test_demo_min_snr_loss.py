"""The demo's diffusion loss (``demo/min_snr_loss.py``) against the closed form: per-sample ε MSE weighted by
min(SNR, γ)/SNR with SNR(t) = ᾱ_t / (1 − ᾱ_t) (Min-SNR, Hang et al. 2023, eq. 7), averaged over the batch."""
import pytest
import torch

from lcm_lora.demo.min_snr_loss import min_snr_eps_loss

diffusers = pytest.importorskip("diffusers")


def test_min_snr_weighting_is_the_closed_form():
    sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    g = torch.Generator().manual_seed(0)
    pred, noise = torch.randn(4, 1, 3, 3, generator=g), torch.randn(4, 1, 3, 3, generator=g)
    t = torch.tensor([0, 100, 500, 999])
    acs = sched.alphas_cumprod.double()[t]
    snr = acs / (1 - acs)
    per = ((pred - noise).double() ** 2).mean(dim=(1, 2, 3))
    for gamma in (5.0, 0.5):
        want = (per * torch.clamp(snr, max=gamma) / snr).mean()
        torch.testing.assert_close(min_snr_eps_loss(pred, noise, t, sched, gamma).double(), want, rtol=1e-5, atol=0)
    assert (snr[:2] > 5.0).all() and (snr[2:] < 5.0).all()  # both sides of the clamp are exercised
    torch.testing.assert_close(min_snr_eps_loss(pred, noise, t, sched, None).double(), per.mean(), rtol=1e-6, atol=0)
