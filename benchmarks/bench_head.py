"""Speed of the MLC-NC head and losses, and of a full MLC-NC training step (a script, not a test).

1. Head + losses, forward + backward, B=64, C=80, 7x7x2048 backbone maps: mlcnc's vectorised
   head and MLCNCLoss against a straightforward loop form of the same computation, written
   here the way the authors' code does it (queries repeated per image through
   nn.MultiheadAttention, a per-sample per-class projection loop, a per-sample per-class
   per-prototype FPC loop, a B x C x C bmm for FLA, a per-class prototype update). Both use
   the same weights; their outputs are checked equal before timing.
2. A full training step (forward, backward, Adam) on a ResNet-50 at 224 px: MLC-NC against
   the same backbone with a linear head and BCE.

Usage: python benchmarks/bench_head.py [--loop-steps 1] [--repeats 5] [--threads 1] [--skip-full]
Timings are medians over repeats (the machine may be shared).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlcnc.losses import MLCNCLoss, two_way_loss
from mlcnc.models import create_mlcnc
from mlcnc.models.head import MLCNCHead


class LoopHead(nn.Module):
    """The head as the authors' code writes it, sharing ``head``'s parameters."""

    def __init__(self, head: MLCNCHead, form: str) -> None:
        super().__init__()
        self.head = head
        self.form = form

    def forward(self, feature_map: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        head = self.head
        batch = feature_map.shape[0]
        tokens = F.relu(head.token_embed(feature_map.flatten(2).transpose(1, 2))).transpose(0, 1)
        queries = head.label_queries.unsqueeze(1).repeat(1, batch, 1)  # (C, B, E), per image
        mha = head.attention.mha
        features = F.multi_head_attention_forward(
            queries,
            tokens,
            tokens,
            mha.embed_dim,
            mha.num_heads,
            mha.in_proj_weight,
            mha.in_proj_bias,
            None,
            None,
            False,
            mha.dropout,
            mha.out_proj.weight,
            mha.out_proj.bias,
            training=self.training,
            need_weights=False,
        )[0].transpose(0, 1)  # (B, C, E)
        if self.form == "index":
            # The authors' form: index per (b, c), write into a preallocated tensor. Each
            # indexed slice gets a full-size gradient in the backward pass.
            projected = features.new_zeros(batch, head.num_classes, head.proj_dim)
            for b in range(batch):
                for c in range(head.num_classes):
                    projected[b, c] = features[b, c] @ head.proj_weight[c] + head.proj_bias[c]
        else:
            # A better loop: split once with unbind (one autograd node each), then stack.
            weights, biases = head.proj_weight.unbind(0), head.proj_bias.unbind(0)
            projected = torch.stack(
                [
                    torch.stack(
                        [row @ weights[c] + biases[c] for c, row in enumerate(sample.unbind(0))]
                    )
                    for sample in features.unbind(0)
                ]
            )
        projections = F.normalize(projected, dim=-1)
        logits = head.temperature * projections.reshape(batch, -1) @ head.classifier
        return logits, features, projections


def loop_losses(
    logits: Tensor,
    features: Tensor,
    queries: Tensor,
    projections: Tensor,
    targets: Tensor,
    prototypes: Tensor,
    sums: Tensor,
    counts: Tensor,
    tau: float = 0.5,
) -> Tensor:
    """alpha*FLA + beta*FPC + TW as the authors' code computes them, loops included."""
    batch, num_classes = targets.shape
    f = F.normalize(features, dim=-1)
    q = F.normalize(queries, dim=-1)
    cosine = torch.bmm(f, q.T.expand(batch, -1, -1)).diagonal(dim1=1, dim2=2)  # B x C x C
    pos = torch.log((1 + cosine) / 2 + 1e-6)
    neg = torch.log(
        1 - (num_classes - 1) / num_classes * (1 / (num_classes - 1) + cosine).abs() + 1e-6
    )
    fla = -(targets * pos + (1 - targets) * neg).mean()
    centres = F.normalize(prototypes, dim=-1)
    terms = []
    for i in range(batch):
        for j in range(num_classes):
            if targets[i, j] == 1:
                sims = torch.stack(
                    [projections[i, j] @ centres[k] / tau for k in range(num_classes)]
                )
                terms.append(-F.log_softmax(sims, dim=0)[j])
    fpc = torch.stack(terms).mean()
    with torch.no_grad():
        for c in range(num_classes):
            if targets[:, c].any():
                sums[c] += projections[targets[:, c] == 1, c].sum(0)
                counts[c] += targets[:, c].sum()
    return 0.5 * fla + 0.1 * fpc + two_way_loss(logits, targets, tp=4.0, tn=1.0)


def head_flops(
    batch: int, tokens: int, in_features: int, embed: int, classes: int, proj: int
) -> float:
    """FLOPs of the main matrix products, forward + backward (3x forward)."""
    forward = 2 * (
        batch * tokens * in_features * embed  # token embedding
        + batch * tokens * embed * 2 * embed  # key and value projections
        + classes * embed * embed  # query projection, once
        + 2 * batch * classes * tokens * embed  # scores and weighted values
        + batch * classes * embed * embed  # output projection
        + batch * classes * embed * proj  # per-class projections
        + batch * classes * proj * classes * 2  # classifier and FPC similarities
    )
    return 3.0 * forward


def timed(step, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def autocast(args: argparse.Namespace):
    """bfloat16 autocast with ``--amp`` (the losses stay float32 inside)."""
    if not args.amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16)


def bench_head(args: argparse.Namespace) -> None:
    batch, classes, channels, side = args.batch, args.classes, 2048, 7
    device = torch.device(args.device)
    torch.manual_seed(0)
    head = MLCNCHead(channels, classes).to(device)
    criterion = MLCNCLoss(classes, proj_dim=head.proj_dim, warmup_epochs=0).to(device)
    generator = torch.Generator().manual_seed(0)
    feature_map = torch.randn(batch, channels, side, side, generator=generator).relu()
    targets = (torch.rand(batch, classes, generator=generator) < 3 / classes).float()
    targets[torch.arange(batch), torch.randint(classes, (batch,), generator=generator)] = 1.0
    feature_map, targets = feature_map.to(device), targets.to(device)
    criterion.prototypes.copy_(
        F.normalize(torch.randn(classes, head.proj_dim, generator=generator), dim=-1)
    )
    criterion.prototype_valid.fill_(True)
    loops = {form: LoopHead(head, form) for form in args.loop_forms}

    # Same function: compare in eval mode (no dropout) before timing.
    head.eval()
    criterion.eval()
    with torch.no_grad():
        fast = head(feature_map)
        fast_loss = criterion(fast, targets)["total"]
        for form, loop in loops.items():
            loop.eval()
            slow_logits, slow_features, slow_proj = loop(feature_map)
            slow_loss = loop_losses(
                slow_logits,
                slow_features,
                head.label_queries,
                slow_proj,
                targets,
                criterion.prototypes,
                torch.zeros(classes, head.proj_dim, device=device),
                torch.zeros(classes, device=device),
            )
            torch.testing.assert_close(fast.logits, slow_logits, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(fast_loss, slow_loss, atol=1e-4, rtol=1e-4)
            print(
                f"check: vectorised == loop ({form}): logits max diff "
                f"{(fast.logits - slow_logits).abs().max():.1e}, "
                f"loss {fast_loss.item():.5f} vs {slow_loss.item():.5f}"
            )
    head.train()
    criterion.train()

    features = feature_map.clone().requires_grad_(True)

    def vectorised_step() -> None:
        head.zero_grad(set_to_none=True)
        features.grad = None
        with autocast(args):
            output = head(features)
        criterion(output, targets)["total"].backward()

    sums = torch.zeros(classes, head.proj_dim, device=device)
    counts = torch.zeros(classes, device=device)

    def loop_step(loop: LoopHead) -> None:
        head.zero_grad(set_to_none=True)
        features.grad = None
        with autocast(args):
            logits, class_features, projections = loop(features)
        logits, class_features, projections = (
            logits.float(),
            class_features.float(),
            projections.float(),
        )
        loop_losses(
            logits,
            class_features,
            head.label_queries,
            projections,
            targets,
            criterion.prototypes,
            sums,
            counts,
        ).backward()

    vectorised_step()  # warm-up
    fast_times = timed(vectorised_step, args.repeats, device)
    slow_times = {}
    for form, loop in loops.items():
        if args.loop_steps:
            loop_step(loop)  # warm-up, untimed
            slow_times[form] = timed(lambda loop=loop: loop_step(loop), args.loop_steps, device)
    flops = head_flops(batch, side * side, channels, head.embed_dim, classes, head.proj_dim)
    fast_median = statistics.median(fast_times)
    print(
        f"\nHead + losses, forward + backward: B={batch}, C={classes}, {side}x{side}x{channels} "
        f"maps, {device_name(device)}, amp={args.amp}, {flops / 1e9:.1f} GFLOP of main matmuls"
    )
    print(f"{'implementation':<28}{'median s/step':>14}{'runs':>6}{'GFLOP/s':>10}{'speed-up':>10}")
    print(
        f"{'vectorised (mlcnc)':<28}{fast_median:>14.3f}{len(fast_times):>6}{flops / fast_median / 1e9:>10.1f}"
        f"{'':>10}"
    )
    names = {"index": "loop, authors' form (index)", "unbind": "loop, unbind + stack"}
    for form, times in slow_times.items():
        slow_median = statistics.median(times)
        print(
            f"{names[form]:<28}{slow_median:>14.3f}{len(times):>6}"
            f"{'':>10}{slow_median / fast_median:>9.1f}x"
        )
    print(f"  vectorised runs: {', '.join(f'{t:.3f}' for t in fast_times)}")
    for form, times in slow_times.items():
        print(
            f"  loop ({form}) runs, after one untimed warm-up: {', '.join(f'{t:.2f}' for t in times)}"
        )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


class LinearBaseline(nn.Module):
    def __init__(self, backbone: nn.Module, classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.num_features, classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.backbone(images).mean(dim=(2, 3)))


def bench_full_step(args: argparse.Namespace) -> None:
    classes, batch = args.classes, args.full_batch
    device = torch.device(args.device)
    torch.manual_seed(0)
    mlcnc_model = create_mlcnc(classes, backbone="resnet50", pretrained=False).to(device)
    criterion = MLCNCLoss(classes, proj_dim=mlcnc_model.proj_dim, warmup_epochs=0).to(device)
    criterion.prototypes.normal_()
    criterion.prototype_valid.fill_(True)
    linear = LinearBaseline(create_mlcnc(classes, backbone="resnet50").backbone, classes).to(device)
    linear.backbone.load_state_dict(mlcnc_model.backbone.state_dict())
    images = torch.randn(batch, 3, 224, 224, device=device)
    targets = (torch.rand(batch, classes, device=device) < 0.05).float()
    targets[:, 0] = 1.0

    def make_step(model: nn.Module, loss_fn):
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(args):
                output = model(images)
            loss_fn(output).backward()
            optimizer.step()

        return step

    mlcnc_step = make_step(mlcnc_model, lambda out: criterion(out, targets)["total"])
    linear_step = make_step(
        linear, lambda logits: F.binary_cross_entropy_with_logits(logits.float(), targets)
    )
    mlcnc_step()
    linear_step()
    mlcnc_times, linear_times = [], []
    for _ in range(args.full_repeats):  # interleaved, so load changes hit both
        linear_times += timed(linear_step, 1, device)
        mlcnc_times += timed(mlcnc_step, 1, device)
    linear_median, mlcnc_median = statistics.median(linear_times), statistics.median(mlcnc_times)
    # Each MLC-NC step is timed right after a linear step, so the ratio within a pair is
    # less sensitive to load from other processes than the ratio of medians.
    paired = statistics.median(m / li for m, li in zip(mlcnc_times, linear_times, strict=True))
    print(
        f"\nFull training step (forward, backward, Adam), ResNet-50, 224 px, batch {batch}, "
        f"C={classes}, {device_name(device)}, amp={args.amp}"
    )
    print(f"{'model':<28}{'median s/step':>14}{'runs':>6}{'vs linear':>10}")
    print(f"{'ResNet-50 + linear + BCE':<28}{linear_median:>14.3f}{len(linear_times):>6}{'':>10}")
    print(
        f"{'ResNet-50 + MLC-NC':<28}{mlcnc_median:>14.3f}{len(mlcnc_times):>6}"
        f"{100 * (mlcnc_median / linear_median - 1):>+9.1f}%"
    )
    print(f"  median of paired ratios MLC-NC / linear: {100 * (paired - 1):+.1f}%")
    print(
        f"  linear runs: {', '.join(f'{t:.2f}' for t in linear_times)}; "
        f"MLC-NC runs: {', '.join(f'{t:.2f}' for t in mlcnc_times)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5, help="vectorised head steps timed")
    parser.add_argument("--loop-steps", type=int, default=1, help="loop head steps timed (slow)")
    parser.add_argument(
        "--loop-forms", nargs="+", default=["index", "unbind"], choices=["index", "unbind"]
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: default); 1 resists shared-CPU noise",
    )
    parser.add_argument("--full-batch", type=int, default=8)
    parser.add_argument("--full-repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--skip-head", action="store_true")
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_head:
        bench_head(args)
    if not args.skip_full:
        bench_full_step(args)


if __name__ == "__main__":
    main()
