"""Two-branch backbones for BBN and URS: shared early layers, two copies of the last part.

Also the output record of those models (a ``ModelOutput`` with the extra fields their
criteria read), so the engine, which only reads ``logits``, needs no change for them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mlcnc.models.backbone import TORCHVISION_RESNETS, TorchvisionResNet, create_backbone
from mlcnc.models.output import ModelOutput

SPLITS = ("block", "stage")


def split_backbone(
    name: str, pretrained: bool | str, split: str
) -> tuple[nn.Sequential, nn.Module, int]:
    """A backbone as (shared trunk, last part, feature width F), trunk then last part being
    the whole backbone.

    split ``block``: the last part is the last residual block (BBN: ``BBN: lib/backbone/
    resnet.py``, ``BBN_ResNet`` builds layer4 with one block less and adds ``cb_block`` /
    ``rb_block``); ``stage``: the last part is the whole last stage, everything at the final
    stride (URS: the last stage of ResNet-50 is the subnet, the rest the shared network).

    Torchvision ResNets split at ``layer4``. timm's EfficientNet family (``conv_stem``,
    ``blocks``, ``conv_head``: EfficientNet, EfficientNet-Lite, MobileNetV3, ...) splits the
    same way: ``block`` = the last block plus the 1x1 head convolution, ``stage`` = every
    block at the final stride plus the head. The pretrained weights are loaded first, so a
    copy of the last part starts from them.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    net = create_backbone(name, pretrained)
    if isinstance(net, TorchvisionResNet):
        stem = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3]
        if split == "stage":
            return nn.Sequential(*stem), net.layer4, net.num_features
        blocks = list(net.layer4.children())
        return nn.Sequential(*stem, *blocks[:-1]), blocks[-1], net.num_features
    model = getattr(net, "model", None)
    if not all(hasattr(model, part) for part in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        raise ValueError(
            f"backbone {name!r}: two-branch models split a torchvision ResNet "
            f"({', '.join(TORCHVISION_RESNETS)}) or a timm EfficientNet-family model "
            "(e.g. tf_efficientnet_lite0); choose one of those"
        )
    head = [model.conv_head, model.bn2]
    stages = list(model.blocks.children())
    if split == "block":
        last_stage = list(stages[-1].children())
        trunk = [*stages[:-1], *last_stage[:-1]]
        part = [last_stage[-1], *head]
    else:
        first = _first_stage_at_final_stride(model)
        trunk, part = stages[:first], [*stages[first:], *head]
    return nn.Sequential(model.conv_stem, model.bn1, *trunk), nn.Sequential(*part), net.num_features


def _first_stage_at_final_stride(model: nn.Module) -> int:
    """Index in ``model.blocks`` of the first stage at the network's final stride.

    timm's ``feature_info`` names the last module of each stride; the final stride starts
    right after the module that ends the one before it (``blocks.4`` for Lite0 -> stage 5).
    """
    info = list(model.feature_info)
    if len(info) < 2:
        raise ValueError("backbone has a single stride; there is no last stage to split off")
    module = str(info[-2]["module"])
    if not module.startswith("blocks."):
        return 0
    return int(module.split(".")[1]) + 1


def copy_module(module: nn.Module) -> nn.Module:
    """An independent copy (same initial weights, its own parameters)."""
    return copy.deepcopy(module)


def global_average_pool(feature_map: Tensor) -> Tensor:
    """(B, F, H, W) -> (B, F)."""
    return feature_map.mean(dim=(2, 3))


def paired_images(images: Tensor) -> tuple[Tensor, Tensor] | None:
    """(B, 2, 3, H, W) -> the two (B, 3, H, W) halves; None for a plain (B, 3, H, W) batch."""
    if images.dim() == 5:
        if images.shape[1] != 2:
            raise ValueError(
                f"paired images must be (B, 2, 3, H, W), got shape {tuple(images.shape)}"
            )
        return images[:, 0], images[:, 1]
    if images.dim() != 4:
        raise ValueError(
            f"images must be (B, 3, H, W) or paired (B, 2, 3, H, W), got {tuple(images.shape)}"
        )
    return None


def paired_targets(targets: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """(B, 2, C) -> the two (B, C) halves as float32, or a clear error."""
    if targets.dim() != 3 or targets.shape[1] != 2:
        raise ValueError(
            f"{name} trains on pairs (uniform, re-balanced): targets must be (B, 2, C) from "
            f"mlcnc.data.paired.PairedDataset, got shape {tuple(targets.shape)}"
        )
    return targets[:, 0].float(), targets[:, 1].float()


def mean_probability_logit(first: Tensor, second: Tensor) -> Tensor:
    """logit((sigmoid(a) + sigmoid(b)) / 2), computed stably: the averaged prediction of two
    branches as a logit (so that sigmoid of it is the mean probability)."""
    log_p = torch.logaddexp(nn.functional.logsigmoid(first), nn.functional.logsigmoid(second))
    log_q = torch.logaddexp(nn.functional.logsigmoid(-first), nn.functional.logsigmoid(-second))
    return log_p - log_q


@dataclass
class BBNOutput(ModelOutput):
    """BBN's output: ``logits`` (B, C) and the mixing weight alpha of the paired training
    forward (None for a plain forward, which mixes with 0.5)."""

    alpha: float | None = None


@dataclass
class TwoBranchOutput(ModelOutput):
    """URS's output. ``logits`` (B, C): the prediction (mean probability of the two branches
    on the uniform / only image). Paired forward, (B, C) each: ``uniform_logits`` u (U-branch
    on the uniform image), ``uniform_cross`` u^ (R-branch on it), ``rebalanced_logits`` r
    (R-branch on the re-balanced image), ``rebalanced_cross`` r^ (U-branch on it);
    ``compensation_u`` / ``compensation_r`` (4, C): each branch's logit-compensation
    parameters (sigma_p, mu_p, sigma_n, mu_n), which the criterion applies."""

    uniform_logits: Tensor | None = None
    uniform_cross: Tensor | None = None
    rebalanced_logits: Tensor | None = None
    rebalanced_cross: Tensor | None = None
    compensation_u: Tensor | None = None
    compensation_r: Tensor | None = None
