"""The ε-prediction loss of the demo's own diffusion training (teacher, style LoRA, full fine-tune): mean squared
error per sample, weighted by Min-SNR (Hang et al. 2023, arXiv 2303.09556, eq. 7 for ε-prediction:
min(SNR(t), γ) / SNR(t), as diffusers' ``train_text_to_image.py --snr_gamma``), averaged over the batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def min_snr_eps_loss(pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, noise_scheduler,
                     snr_gamma: float | None) -> torch.Tensor:
    """Batch mean of ``‖pred − noise‖²`` per sample (mean over its pixels), each weighted by min(SNR, γ)/SNR when
    ``snr_gamma`` is set (SNR from diffusers' ``compute_snr`` on ``noise_scheduler``); plain MSE otherwise."""
    per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(noise_scheduler, t)
        per = per * torch.clamp(snr, max=snr_gamma) / snr
    return per.mean()
