"""Two CPU processes (gloo DDP), each with half the batch, take the same steps as one process with the whole batch."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lcm_lora.training import checkpoint as ckpt
from lcm_lora.training.distributed import spawn_local
from lcm_lora.training.run_log import read_events
from lcm_lora.training.trainer import train
from tiny_training import tiny_teacher_and_data

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


def test_two_processes_match_one_process_with_the_whole_batch(tmp_path):
    teacher, data = tiny_teacher_and_data(tmp_path, n=12, size=16)
    overrides = [f"teacher={teacher}", f"data={data}", "max_steps=3", "batch_size=8", "lora.rank=4", "lora.alpha=4",
                 "validation.every=0", "checkpoint.every=0", "logging.progress=false", "data.cache_latents=false",
                 "data.cache_text=false", "train.gradient_accumulation=2",
                 # Adam with eps = 1 is close to SGD (update ≈ lr·g for |g| ≪ 1), so the float summation-order
                 # differences of the all-reduce are not amplified the way lr·g/|g| amplifies them for tiny g.
                 "optim.learning_rate=1", "optim.eps=1"]
    # fork (no re-import) is safe here: one intra-op thread, no OpenMP pool exists yet in this process
    assert spawn_local(2, train, (TINY, tmp_path / "two", None, overrides, False), start_method="fork") == [0, 0]
    one = train(TINY, tmp_path / "one", overrides=overrides, progress=False)

    two_losses = [e["loss"] for e in read_events(tmp_path / "two") if e["event"] == "step"]
    assert [e["world_size"] for e in read_events(tmp_path / "two") if e["event"] == "start"] == [2]
    assert len(two_losses) == 3
    torch.testing.assert_close(torch.tensor(two_losses), torch.tensor(one.losses), rtol=1e-4, atol=1e-7)
    a = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "one")[-1][1]).tensors
    b = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "two")[-1][1]).tensors
    assert a.keys() == b.keys()
    moved = max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k)
    assert moved > 1e-3  # the LoRA trained, so equal weights are not trivially equal zeros
    # Float floor: in ONE process, the gradient of a batch of 8 and the mean gradient of its two halves
    # already differ by up to ~1e-4 (relative, per tensor) with the near-L1 Huber loss (c = 0.001),
    # because conv kernels block batches 4 and 8 differently. A real mismatch (wrong rows, unsynced
    # or double-counted gradients, different noise) is O(1).
    for k in a:
        assert float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)) <= 5e-4, k


@pytest.mark.slow  # two torchrun agents + two trainer processes: ≈ 45 s on the loaded 2-core VM
def test_two_nodes_rendezvous_on_localhost_match_one_process(tmp_path):
    """Multi-node as documented (README "Multi-node training"): two torchrun agents, one per "node",
    --nnodes 2 --nproc_per_node 1, c10d rendezvous on localhost, gloo. Their run equals one process
    with the doubled batch (each node's process takes half of the global batch of 8)."""
    import os
    import socket
    import subprocess
    import sys

    teacher, data = tiny_teacher_and_data(tmp_path, n=12, size=16)
    overrides = [f"teacher={teacher}", f"data={data}", "max_steps=2", "batch_size=8", "lora.rank=4", "lora.alpha=4",
                 "validation.every=0", "checkpoint.every=0", "logging.progress=false", "data.cache_latents=false",
                 "data.cache_text=false", "optim.learning_rate=1", "optim.eps=1", "train.device=cpu"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
         "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "lcm-two-nodes", "--max_restarts", "0",
         "-m", "lcm_lora.training", "--config", str(TINY), "--output", str(tmp_path / "two"), *overrides],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-3000:] for o in outs)
    one = train(TINY, tmp_path / "one", overrides=overrides, progress=False)

    events = read_events(tmp_path / "two")
    assert [e["world_size"] for e in events if e["event"] == "start"] == [2]
    two_losses = [e["loss"] for e in events if e["event"] == "step"]
    torch.testing.assert_close(torch.tensor(two_losses), torch.tensor(one.losses), rtol=1e-4, atol=1e-7)
    a = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "one")[-1][1]).tensors
    b = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "two")[-1][1]).tensors
    assert a.keys() == b.keys()
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-3
    for k in a:  # float floor: see the test above
        assert float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)) <= 5e-4, k
