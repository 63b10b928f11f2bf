"""Evaluation harness: measuring instruments, a fixed sample plan, and per-sampler result rows.

Every configuration (teacher sampler × steps, LCM-LoRA × steps, style variants) is sampled
from the *same* prompts and the *same* initial noise (:class:`SamplePlan`), so differences
between rows come from the samplers, not from the draw. Each row records class accuracy,
FD (digit-classifier features, vs held-out real images), pixel-space FD, style score, UNet
evaluations per image and wall-clock seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .classifier import ClassifierTraining, SmallCnn, load_classifier, predict, save_classifier, train_classifier
from .dataset import NUM_CLASSES, apply_style, balanced_labels, load_digit_images, prompt_for, split_indices


@dataclass
class Instruments:
    """Classifiers and reference statistics, all from the ``classifier``/``reference`` splits."""

    digit: SmallCnn
    style: SmallCnn
    style_name: str
    ref_stats: tuple  # (mu, sigma) of digit-classifier features of the reference split
    ref_pixel_stats: tuple
    calibration: dict = field(default_factory=dict)  # numbers that tell how to read the metrics

    def measure(self, images: torch.Tensor, labels: torch.Tensor, fd_se: bool = False) -> dict:
        """Metrics of ``images`` prompted with ``labels``; ``fd_se`` adds the bootstrap standard error of FD."""
        images = images.detach().float().cpu().clamp(-1, 1)
        logits, feats = predict(self.digit, images)
        style_logits, _ = predict(self.style, images)
        out = {
            "accuracy": metrics.class_accuracy(logits, labels),
            "fd": metrics.frechet_distance(*metrics.feature_statistics(feats), *self.ref_stats),
            "fd_pixel": metrics.frechet_distance(*metrics.feature_statistics(images.flatten(1)), *self.ref_pixel_stats),
            "style_score": metrics.style_score(style_logits),
            "ink": metrics.ink_coverage(images),
        }
        if fd_se:
            out["fd_se"] = metrics.frechet_distance_bootstrap_se(feats, *self.ref_stats)
        return out

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, 64-d features)`` of the digit classifier for ``images``."""
        return predict(self.digit, images.detach().float().cpu().clamp(-1, 1))


def build_instruments(resolution: int = 16, split_seed: int = 0, style: str = "bold", cache_dir: Path | None = None,
                      n_floor: int | None = None, progress: bool = False) -> Instruments:
    """Train (or load from ``cache_dir``) the digit and style classifiers; compute reference statistics.

    ``calibration`` holds: the digit classifier's accuracy on held-out real images, the style
    score of real plain / styled reference images, and the "real vs real" FD floor — FD of
    ``n_floor`` real *training* images (never seen by the classifier) against the reference set.
    """
    images, labels = load_digit_images(resolution)
    split = split_indices(labels, seed=split_seed)
    x_clf, y_clf = images[split.classifier], labels[split.classifier]
    digit = style_clf = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        dp = cache_dir / f"digit_classifier_r{resolution}_s{split_seed}.safetensors"
        sp = cache_dir / f"style_classifier_{style}_r{resolution}_s{split_seed}.safetensors"
        if dp.is_file() and sp.is_file():
            from .cache_errors import reading_cache_entry

            with reading_cache_entry(dp, "digit classifier"):
                digit = load_classifier(dp)
            with reading_cache_entry(sp, "style classifier"):
                style_clf = load_classifier(sp)
    if digit is None:
        digit = train_classifier(x_clf, y_clf, NUM_CLASSES, progress=progress)
        styled = apply_style(x_clf, style)
        xs = torch.cat([x_clf, styled])
        ys = torch.cat([torch.zeros(len(x_clf)), torch.ones(len(x_clf))]).long()
        style_clf = train_classifier(xs, ys, 2, ClassifierTraining(epochs=20), progress=progress)
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            save_classifier(digit, dp)
            save_classifier(style_clf, sp)

    x_ref, y_ref = images[split.reference], labels[split.reference]
    ref_logits, ref_feats = predict(digit, x_ref)
    inst = Instruments(
        digit=digit, style=style_clf, style_name=style,
        ref_stats=metrics.feature_statistics(ref_feats),
        ref_pixel_stats=metrics.feature_statistics(x_ref.flatten(1)),
    )
    x_tr = images[split.train]
    n = min(n_floor or len(x_tr), len(x_tr))
    pick = torch.from_numpy(np.random.default_rng(split_seed).permutation(len(x_tr))[:n])
    floor = inst.measure(x_tr[pick], labels[split.train][pick])
    ref_styled = apply_style(x_ref, style)
    inst.calibration = {
        "digit_accuracy_heldout": metrics.class_accuracy(ref_logits, y_ref),
        "digit_accuracy_heldout_styled": metrics.class_accuracy(predict(digit, ref_styled)[0], y_ref),
        "style_score_real_plain": metrics.style_score(predict(style_clf, x_ref)[0]),
        "style_score_real_styled": metrics.style_score(predict(style_clf, ref_styled)[0]),
        "fd_real_vs_real": floor["fd"],
        "fd_pixel_real_vs_real": floor["fd_pixel"],
        "real_vs_real_n": n,
        "reference_n": len(x_ref),
        "classifier_train_n": len(x_clf),
    }
    return inst


@dataclass
class SamplePlan:
    """The fixed prompts and initial noise every configuration is sampled from."""

    labels: torch.Tensor
    noise: torch.Tensor
    seed: int

    @classmethod
    def make(cls, n: int, resolution: int = 16, seed: int = 0) -> "SamplePlan":
        g = torch.Generator().manual_seed(seed)
        return cls(labels=balanced_labels(n, seed), noise=torch.randn(n, 1, resolution, resolution, generator=g), seed=seed)


@dataclass
class Teacher:
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    folder: Path

    def embed(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image conditional embeddings for ``labels`` and matching empty-prompt embeddings."""
        prompts = [prompt_for(c) for c in range(NUM_CLASSES)] + [""]
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            emb = self.text_encoder(ids, return_dict=False)[0].float()
        return emb[labels], emb[NUM_CLASSES:].expand(len(labels), -1, -1)


def load_teacher(folder: str | Path) -> Teacher:
    """Load a teacher folder (``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) in float32, eval mode."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..lcm_core.errors import LcmLoraError

    folder = Path(folder)
    for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / part).is_dir():
            raise LcmLoraError(folder, f"not a teacher folder: missing {part}/")
    if (folder / "vae").exists():
        raise LcmLoraError(folder, "the demo evaluates pixel-space teachers only (this folder has a vae/)")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32).eval()
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    import json

    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    return Teacher(unet, text_encoder, tokenizer, scheduler_config, folder)


def batch_slices(n: int, size: int):
    """Consecutive slices of at most ``size`` items covering ``range(n)`` (the samplers' batches)."""
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def sample_rows(name: str, sampler: str, steps_list, sample_fn, plan: SamplePlan, inst: Instruments,
                batch_size: int = 500, progress=None, keep_images: bool = True, extra: dict | None = None):
    """Run ``sample_fn(slice, steps) -> SampleResult`` over the plan in chunks, for each step count;
    returns ``(rows, images_by_steps)``."""
    rows, images_by_steps = [], {}
    for steps in steps_list:
        parts, seconds, nfe = [], 0.0, 0
        for sl in batch_slices(len(plan.labels), batch_size):
            res = sample_fn(sl, steps)
            parts.append(res.images.float().cpu())
            seconds += res.seconds
            nfe = res.nfe
        images = torch.cat(parts)
        row = {"model": name, "sampler": sampler, "steps": int(steps), "nfe": int(nfe), "seconds": round(seconds, 3),
               "ms_per_image": round(1000 * seconds / len(images), 3), "n": len(images)}
        row.update(extra or {})
        row.update({k: round(v, 5) for k, v in inst.measure(images, plan.labels, fd_se=True).items()})
        rows.append(row)
        if keep_images:
            images_by_steps[int(steps)] = images
        if progress is not None:
            progress.update(1)
            progress.set_postfix_str(f"{name} {sampler} {steps} steps: FD {row['fd']:.1f} acc {row['accuracy']:.3f}")
    return rows, images_by_steps
