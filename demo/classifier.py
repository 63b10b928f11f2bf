"""The demo's measuring instruments: a small CNN digit classifier and a style classifier.

Both are trained only on the ``classifier`` split (never on images the generators learn from).
The digit classifier's penultimate layer (64 ReLU units) is the feature space in which the
Fréchet distance is measured — the role Inception-v3's pool features play in FID, scaled to
16×16 digits. Training takes seconds on a CPU and is fully seeded, so the demo retrains
(or reuses a cached copy) instead of shipping weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURE_DIM = 64


class SmallCnn(nn.Module):
    """conv16 → conv32/2 → conv64/2 → fc64 (features) → fc ``num_classes``."""

    def __init__(self, num_classes: int = 10, resolution: int = 16):
        super().__init__()
        self.num_classes = num_classes
        self.resolution = resolution
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        )
        side = (resolution + 3) // 4
        self.fc = nn.Linear(64 * side * side, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (``N×64``), the FD feature space."""
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random ±1-pixel translation (pad with paper, crop) — digits are not centred exactly."""
    n, _, h, w = x.shape
    p = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (n,), generator=g)
    dx = torch.randint(0, 3, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, 1, h, w + 2)
    out = torch.gather(p, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, 1, h, w)
    return torch.gather(out, 3, cols)


@dataclass
class ClassifierTraining:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int = 10,
                     settings: ClassifierTraining | None = None, progress: bool = False) -> SmallCnn:
    """Train a :class:`SmallCnn` with AdamW + cosine decay and shift augmentation (seeded)."""
    from tqdm.auto import tqdm

    s = settings or ClassifierTraining()
    torch.manual_seed(s.seed)
    g = torch.Generator().manual_seed(s.seed)
    model = SmallCnn(num_classes=num_classes, resolution=images.shape[-1])
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps_per_epoch = max(1, (len(images) + s.batch_size - 1) // s.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.epochs * steps_per_epoch)
    model.train()
    for _ in tqdm(range(s.epochs), desc=f"classifier ({num_classes} classes)", disable=not progress, leave=False):
        perm = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), s.batch_size):
            idx = perm[i:i + s.batch_size]
            loss = F.cross_entropy(model(_augment(images[idx], g)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: SmallCnn, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, features)`` for images in [-1, 1]."""
    model.eval()
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        f = model.features(images[i:i + batch_size].float())
        feats.append(f)
        logits.append(model.head(f))
    return torch.cat(logits), torch.cat(feats)


def save_classifier(model: SmallCnn, path: str | Path) -> None:
    """safetensors file with the class count and resolution in its metadata (atomic)."""
    from ..lcm_core.safetensors_io import write_safetensors

    write_safetensors(path, model.state_dict(), {"num_classes": str(model.num_classes), "resolution": str(model.resolution)},
                      overwrite=True)


def load_classifier(path: str | Path) -> SmallCnn:
    """Inverse of :func:`save_classifier` (validated safetensors only)."""
    from ..lcm_core.errors import LcmLoraError
    from ..lcm_core.safetensors_io import read_safetensors

    state, meta = read_safetensors(path)
    try:
        model = SmallCnn(num_classes=int(meta["num_classes"]), resolution=int(meta["resolution"]))
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as e:
        raise LcmLoraError(path, f"not a demo classifier file ({e})") from e
    return model.eval()
