"""Run logging: the JSONL event stream, CSV or TensorBoard metrics, and the tqdm bar.

``<output>/events.jsonl`` is the machine-readable progress feed (the ComfyUI panel tails it);
one JSON object per line, flushed immediately:

* ``{"event": "setup", "time", "status": "loading", "pid"}`` (before the teacher and data are loaded)
* ``{"event": "start", "time", "max_steps", "start_step", "status": "running", "config_hash", "pid"}``
* ``{"event": "step", "time", "step", "max_steps", "loss", "lr", "it_s", "eta_s"}``
* ``{"event": "checkpoint", "time", "step", "path"}``
* ``{"event": "validation", "time", "step", "images": [png paths], "steps": [1, 2, 4]}``
* ``{"event": "end", "time", "step", "status": "finished" | "interrupted" | "diverged" | "error",
  "adapter": path | null, "checkpoint": path | null, "message": str}`` — always the last line of a
  run that ended in Python (a killed process writes none; its last event tells where it was)

Only the main process writes. Metrics go to ``<output>/metrics.csv`` (step, loss, lr, it_s,
elapsed_s) or TensorBoard (``<output>/tensorboard``) per ``logging.backend``.
"""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path


class RunLog:
    def __init__(self, output_dir: Path, backend: str = "csv", enabled: bool = True, progress: bool = True,
                 max_steps: int = 0, start_step: int = 0):
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.max_steps = max_steps
        self.start_time = time.time()
        self._rate = None
        self._last = (time.time(), start_step)
        self._events = open(self.output_dir / "events.jsonl", "a", encoding="utf-8") if enabled else None
        self._csv = self._tb = None
        if enabled and backend == "csv":
            path = self.output_dir / "metrics.csv"
            new = not path.exists()
            self._csv_file = open(path, "a", newline="", encoding="utf-8")
            self._csv = csv.writer(self._csv_file)
            if new:
                self._csv.writerow(["step", "loss", "lr", "it_s", "elapsed_s"])
        elif enabled and backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.fspath(self.output_dir / "tensorboard"))
        self._bar = None
        self._progress = enabled and progress

    def start_bar(self, start_step: int) -> None:
        """Open the tqdm bar once the start step is known (after a resume)."""
        self._last = (time.time(), start_step)
        if self._progress and self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.max_steps, initial=start_step, desc="LCD", unit="step", dynamic_ncols=True)

    def event(self, kind: str, **fields) -> None:
        if self._events is None:
            return
        self._events.write(json.dumps({"event": kind, "time": round(time.time(), 3), **fields}, default=str) + "\n")
        self._events.flush()

    def step(self, step: int, loss: float, lr: float, log_row: bool = True) -> None:
        if not self.enabled:
            return
        now = time.time()
        t0, s0 = self._last
        if step > s0:
            rate = (step - s0) / max(now - t0, 1e-9)
            self._rate = rate if self._rate is None else 0.9 * self._rate + 0.1 * rate
        self._last = (now, step)
        it_s = self._rate or 0.0
        eta = (self.max_steps - step) / it_s if it_s > 0 else None
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}")
        if not log_row:
            return
        self.event("step", step=step, max_steps=self.max_steps, loss=loss, lr=lr, it_s=round(it_s, 4),
                   eta_s=None if eta is None else round(eta, 1))
        if self._csv is not None:
            self._csv.writerow([step, f"{loss:.8g}", f"{lr:.8g}", f"{it_s:.4f}", f"{now - self.start_time:.2f}"])
            self._csv_file.flush()
        if self._tb is not None:
            self._tb.add_scalar("loss", loss, step)
            self._tb.add_scalar("lr", lr, step)

    def write(self, message: str) -> None:
        """A line of text that does not break the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._events is not None:
            self._events.close()
            self._events = None
        if self._csv is not None:
            self._csv_file.close()
            self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_events(output_dir: str | os.PathLike) -> list[dict]:
    """All events of a run folder (for the ComfyUI panel, tests and tools)."""
    path = Path(output_dir) / "events.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now
                pass
    return out
