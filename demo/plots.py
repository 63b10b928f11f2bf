"""Figures of the demo report (matplotlib, Agg backend; PNG files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .teacher_samplers import MODEL_LABELS, SAMPLER_LABELS

_COLORS = {"ddim": "tab:blue", "euler": "tab:orange", "dpmpp_2m": "tab:green", "lcm": "tab:red", "tcd": "tab:purple", "pcm": "tab:brown"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _series(rows):
    """Group the main-table rows into ``{label: (sampler, [rows sorted by steps])}``."""
    out = {}
    for r in rows:
        label = MODEL_LABELS.get(r["model"], r["model"]) + " " + SAMPLER_LABELS.get(r["sampler"], r["sampler"])
        if r.get("gamma") is not None:
            label += f" γ {r['gamma']:g}"
        out.setdefault(label, (r["sampler"], []))[1].append(r)
    for _, rs in out.values():
        rs.sort(key=lambda r: r["steps"])
    return out


def plot_quality(rows, path: Path, x: str, metric: str = "fd", floor: float | None = None, title: str = "") -> Path:
    """One line per sampler: ``metric`` against ``x`` (``steps``, ``nfe`` or ``ms_per_image``), log-x."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.0), dpi=110)
    for label, (sampler, rs) in _series(rows).items():
        ax.plot([r[x] for r in rs], [r[metric] for r in rs], marker="o", label=label, color=_COLORS.get(sampler),
                linewidth=2.2 if sampler in ("lcm", "tcd", "pcm") else 1.4)
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle="--", linewidth=1, label="real vs real")
    ax.set_xscale("log", base=2)
    if metric.startswith("fd"):
        ax.set_yscale("log")
    names = {"steps": "sampling steps", "nfe": "UNet evaluations per image (CFG step = 2)",
             "ms_per_image": "wall time per image (ms, CPU)"}
    ax.set_xlabel(names.get(x, x))
    ax.set_ylabel({"fd": "FD (classifier features) ↓", "accuracy": "class accuracy ↑",
                   "fd_pixel": "FD (pixels) ↓"}.get(metric, metric))
    ax.set_title(title or f"{metric} vs {x}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_heatmap(values: np.ndarray, lambdas1, lambdas2, path: Path, title: str, fmt: str = "{:.2f}",
                 cmap: str = "viridis") -> Path:
    """``values[i, j]`` at λ1 = ``lambdas1[i]`` (rows, style) and λ2 = ``lambdas2[j]`` (columns, LCM)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.0), dpi=110)
    im = ax.imshow(values, cmap=cmap, origin="lower", aspect="auto")
    ax.set_xticks(range(len(lambdas2)), [f"{v:g}" for v in lambdas2])
    ax.set_yticks(range(len(lambdas1)), [f"{v:g}" for v in lambdas1])
    ax.set_xlabel("λ2 (LCM-LoRA)")
    ax.set_ylabel("λ1 (style LoRA)")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if values[i, j] < np.nanmean(values) else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def save_image_grid(rows: list[tuple[str, object]], path: Path, per_row: int = 10, title: str = "") -> Path:
    """Rows of images (``(label, tensor N×1×H×W in [-1, 1])``), first ``per_row`` of each, labelled on the left."""
    plt = _plt()
    from .dataset import to_uint8

    tiles = []
    for _, images in rows:
        arr = to_uint8(images[:per_row])
        h, w = arr.shape[1:]
        pad = np.full((h + 2, (w + 2) * per_row), 40, dtype=np.uint8)
        for k, im in enumerate(arr):
            pad[1:1 + h, k * (w + 2) + 1:k * (w + 2) + 1 + w] = im
        tiles.append(pad)
    mosaic = np.concatenate(tiles, axis=0)
    fig, ax = plt.subplots(figsize=(per_row * 0.55 + 2.8, len(rows) * 0.55 + 0.8), dpi=110)
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    row_h = mosaic.shape[0] / len(rows)
    ax.set_yticks([row_h * (i + 0.5) for i in range(len(rows))], [label for label, _ in rows], fontsize=8)
    ax.set_xticks([])
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight", pad_inches=0.1)  # never clip the row labels on the left
    plt.close(fig)
    return path
