"""The universal-acceleration rows' metric (issue 13 goal (d)): FD in the digit classifier's features between a row's
samples and a reference sample set (the fine-tune's own DDIM 25), with its bootstrap s.e., plus the row's class
accuracy and style score. Shared by the 300-sample rows (:mod:`.universal_acceleration`) and the pooled ones
(:mod:`.goal_d`)."""
from __future__ import annotations


def fd_to_reference_row(inst, images, labels, ref_stats, row: dict) -> tuple[dict, tuple]:
    """``row`` plus the metrics of ``images`` prompted with ``labels``. With ``ref_stats`` None the images *are* the
    reference: the row gets ``"role": "reference"`` and their feature statistics are returned as the new
    ``ref_stats``; otherwise ``fd_vs_reference`` (Fréchet distance to ``ref_stats``) and ``fd_vs_reference_se``.
    Returns ``(row, ref_stats)``."""
    from . import metrics

    feats = inst.features(images)[1]
    m = inst.measure(images, labels)
    row = {**row, "accuracy": round(m["accuracy"], 5), "style_score": round(m["style_score"], 5)}
    if ref_stats is None:
        return {**row, "role": "reference"}, metrics.feature_statistics(feats)
    row["fd_vs_reference"] = round(metrics.frechet_distance(*metrics.feature_statistics(feats), *ref_stats), 5)
    row["fd_vs_reference_se"] = round(metrics.frechet_distance_bootstrap_se(feats, *ref_stats), 5)
    return row, ref_stats
