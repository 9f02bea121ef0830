"""Cost of exact global-batch losses under DDP (a script, not a test).

Per training step at global batch B=64, C=80 (MLC-NC's outputs with E=768, P=20), split
over W processes, forward + backward, global (``mlcnc.losses.distributed``) against the
per-shard form the losses had before (the same code inside ``local_batch()``):
1. ``gather_batch`` of the (B/W, 2C) logits + targets alone;
2. ``two_way_loss``;
3. ``MLCNCLoss`` after its warm-up, prototypes set (L_FLA + L_FPC + L_TW).
First, in one process, the two-way value of the global batch against the mean of its
per-shard values (what each process used to compute) for W = 2, 4, 8.

Usage:
  python benchmarks/bench_gather.py [--world 2] [--steps 300]   # spawns W gloo CPU processes
  torchrun --nproc_per_node 2 benchmarks/bench_gather.py [--steps 300]   # nccl on GPUs
Times are per step (median over --steps after a warm-up); "all_reduce(1)" is the latency of
one collective, for scale (L_FLA and L_FPC add one each, the two-way loss two: its count and
its per-class gather, plus the gather's backward). The machine may be shared: compare the
columns of one run rather than runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mlcnc.losses import MLCNCLoss, two_way_loss
from mlcnc.losses.distributed import gather_batch, local_batch
from mlcnc.models.output import ModelOutput

B, C, E, P = 64, 80, 768, 20


def batch(device: torch.device, seed: int = 0) -> tuple[ModelOutput, torch.Tensor]:
    """A global batch of MLC-NC outputs (leaves that need gradients) and long-tailed targets."""
    g = torch.Generator().manual_seed(seed)
    rate = 0.3 * torch.linspace(1.0, 0.02, C)  # positives per class: head to tail
    targets = (torch.rand(B, C, generator=g) < rate).float()
    output = ModelOutput(
        logits=3 * torch.randn(B, C, generator=g),
        class_features=torch.randn(B, C, E, generator=g),
        projections=torch.randn(B, C, P, generator=g),
        label_embeddings=torch.randn(C, E, generator=g),
    )
    moved = {k: getattr(output, k).to(device).requires_grad_() for k in
             ("logits", "class_features", "projections", "label_embeddings")}  # fmt: skip
    return ModelOutput(**moved), targets.to(device)


def shard(output: ModelOutput, targets: torch.Tensor, rank: int, world: int):
    rows = slice(rank * B // world, (rank + 1) * B // world)
    fields = {
        "logits": output.logits.detach()[rows].requires_grad_(),
        "class_features": output.class_features.detach()[rows].requires_grad_(),
        "projections": output.projections.detach()[rows].requires_grad_(),
        "label_embeddings": output.label_embeddings.detach().clone().requires_grad_(),
    }
    return ModelOutput(**fields), targets[rows]


def shard_values() -> None:
    output, targets = batch(torch.device("cpu"))
    with local_batch():
        print(
            f"two-way loss, B={B}, C={C}: global batch {two_way_loss(output.logits, targets, tp=4.0, tn=1.0):.4f}"
        )
        for world in (2, 4, 8):
            values = [
                two_way_loss(*[t[r * B // world : (r + 1) * B // world] for t in
                               (output.logits, targets)], tp=4.0, tn=1.0)
                for r in range(world)
            ]  # fmt: skip
            print(f"  mean of per-shard values, W={world}: {torch.stack(values).mean():.4f}")


def timed(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds per step: the median over ``steps`` (robust on a shared machine), after a
    warm-up, all processes aligned by a barrier first."""
    for _ in range(10):
        step()
    dist.barrier()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(rank: int, world: int, steps: int, port: int | None) -> None:
    cuda = torch.cuda.is_available()
    if port is not None:  # spawned here: gloo on CPU
        cuda = False
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    else:  # torchrun
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    criterion = MLCNCLoss(C, proj_dim=P, warmup_epochs=0).to(device).train()
    whole, all_targets = batch(device)
    with local_batch(), torch.no_grad():
        criterion(whole, all_targets)
    criterion.end_epoch()  # prototypes of the global batch, the same on every process
    output, targets = shard(whole, all_targets, rank, world)

    def all_reduce_step() -> None:
        dist.all_reduce(torch.ones((), device=device))

    def gather_step() -> None:
        both = gather_batch(torch.cat([output.logits, targets], dim=1))
        both[:, :C].sum().backward()

    def two_way_step() -> None:
        two_way_loss(output.logits, targets, tp=4.0, tn=1.0).backward()

    def criterion_step() -> None:
        criterion(output, targets)["total"].backward()

    rows = []
    for name, step in (("all_reduce(1)", all_reduce_step), ("gather_batch", gather_step),
                       ("two_way_loss", two_way_step), ("MLCNCLoss", criterion_step)):  # fmt: skip
        exact = timed(step, steps, device)
        with local_batch():
            per_shard = timed(step, steps, device) if name in ("two_way_loss", "MLCNCLoss") else 0.0
        rows.append((name, exact, per_shard))
    if rank == 0:
        backend = dist.get_backend()
        print(f"W={world} {backend} on {device.type}, {B // world} images per process, "
              f"ms per step (forward + backward), median of {steps}:")  # fmt: skip
        print(f"  {'':14s} {'global':>8s} {'per-shard':>10s} {'added':>8s}")
        for name, exact, per_shard in rows:
            added = exact - per_shard
            print(f"  {name:14s} {1e3 * exact:8.3f} {1e3 * per_shard:10.3f} {1e3 * added:8.3f}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=int, default=2, help="processes to spawn (CPU, gloo)")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if "RANK" in os.environ:  # under torchrun
        world = int(os.environ["WORLD_SIZE"])
        if int(os.environ["RANK"]) == 0:
            shard_values()
        run(int(os.environ["RANK"]), world, args.steps, None)
        return
    shard_values()
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(run, args=(args.world, args.steps, port), nprocs=args.world,
                       start_method="spawn")  # fmt: skip


if __name__ == "__main__":
    main()
