"""Deterministic, resumable order of training batches.

Each epoch shuffles the items of every bucket, cuts them into batches of the *global* batch size
(the last batch of a bucket is filled up with items from the same bucket's start, so every batch
is full and has one shape), and shuffles the batch order. The order is a pure function of
``(seed, epoch)``, so the data position is just ``(epoch, batch index)``: resuming restores it
exactly, and every process of a multi-process run sees the same global batch and takes its
own rows.
"""
from __future__ import annotations

import random
from collections import defaultdict


class BatchPlan:
    def __init__(self, bucket_of_item: list, batch_size: int, seed: int):
        if not bucket_of_item:
            raise ValueError("no training items")
        self.bucket_of_item = list(bucket_of_item)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._cache and self._cache[0] == epoch:
            return self._cache[1]
        rng = random.Random(f"lcm-lora-data-{self.seed}-{epoch}")
        groups: dict = defaultdict(list)
        for item, bucket in enumerate(self.bucket_of_item):
            groups[bucket].append(item)
        batches = []
        for bucket in sorted(groups):
            items = groups[bucket]
            rng.shuffle(items)
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                while len(batch) < self.batch_size:  # fill from the bucket's start (wraps several times if tiny)
                    batch += items[: self.batch_size - len(batch)]
                batches.append(batch)
        rng.shuffle(batches)
        self._cache = (epoch, batches)
        return batches

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.epoch_batches(0))

    def next(self) -> list[int]:
        batches = self.epoch_batches(self.epoch)
        if self.position >= len(batches):
            self.epoch += 1
            self.position = 0
            batches = self.epoch_batches(self.epoch)
        batch = batches[self.position]
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
