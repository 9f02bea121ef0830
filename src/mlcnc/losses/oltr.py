"""OLTR's losses (Liu et al., CVPR 2019; ``mlcnc.models.oltr`` for the network) for
multi-label: sigmoid BCE in place of softmax cross-entropy, and the discriminative centroid
loss with several positives per image.

The code's ``loss/DiscCentroidsLoss.py`` on a batch of B images with labels y_i:

- attracting term sum_i ||x_i - c_{y_i}||^2 / 2 / B, whose gradient with respect to the
  centroids is replaced (``DiscCentroidsLossFunc.backward``) by
  sum_{i: y_i = c} (c_c - x_i) / (1 + n_c) / B, n_c the images of class c in the batch
  (the feature gradient is the plain one, (x_i - c_{y_i}) / B);
- repelling term max(0, margin - sum_{i, c != y_i} ||x_i - c_c||^2 / (B C)), margin 10,
  clamped at 1e6, gradients into features and centroids;
- loss = attract + 0.01 repel, weighted 0.01 in the total (``FeatureLoss`` weight).

Multi-label (choices, also in ``docs/baselines_reference.md``): the pairs (i, c) with
y_ic = 1 take the place of (i, y_i). Attract = sum over positive pairs of ||x_i - c_c||^2,
/ 2, divided by the number P of positive pairs (= B when each image has one label), the
centroid gradient divided by (1 + n_c), n_c the positives of class c in the batch. Repel
masks every positive entry (not one per row) and divides by B C as the code. An image
without positives adds no attracting pair and all C entries to the repelling sum.

Under DDP every count is the global batch's: P by ``global_mean``, n_c all-reduced, and
the repelling mean (inside a clamp, so not linear) from the gathered sums
(``gather_stack``), so the value and gradients are those of one process on the whole
batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlcnc.losses.base import AllReduce, Criterion
from mlcnc.losses.distributed import gather_stack, global_entry_mean, global_mean
from mlcnc.losses.reduction import prepare_logits


def centroid_gradient_scaled(centroids: Tensor, counts: Tensor) -> Tensor:
    """``centroids`` unchanged in value, their gradient divided by (1 + counts) per class:
    the code's ``DiscCentroidsLossFunc.backward`` rule for the attracting term."""
    detached = centroids.detach()
    return detached + (centroids - detached) / (1.0 + counts).unsqueeze(1)


def squared_distances(features: Tensor, centroids: Tensor) -> Tensor:
    """||x_i - c_c||^2, (B, C), from features (B, D) and centroids (C, D)."""
    return (features.unsqueeze(1) - centroids.unsqueeze(0)).pow(2).sum(dim=2)


def discriminative_centroid_loss(
    features: Tensor,
    targets: Tensor,
    centroids: Tensor,
    *,
    margin: float = 10.0,
    repel_weight: float = 0.01,
) -> dict[str, Tensor]:
    """OLTR's discriminative centroid loss for several positives per image (module
    docstring). features (B, D), targets (B, C), centroids (C, D); float32.
    Returns ``{"centroid": attract + repel_weight * repel, "attract": ..., "repel": ...}``."""
    x, c = features.float(), centroids.float()
    positive = (targets > 0).float()
    if x.dim() != 2 or c.dim() != 2 or positive.shape != (x.shape[0], c.shape[0]):
        raise ValueError(
            "discriminative_centroid_loss: features (B, D), targets (B, C), centroids (C, D); "
            f"got {tuple(x.shape)}, {tuple(targets.shape)}, {tuple(c.shape)}"
        )
    if x.shape[1] != c.shape[1]:
        raise ValueError(
            f"discriminative_centroid_loss: features have {x.shape[1]} dims, centroids {c.shape[1]}"
        )
    counts = gather_stack(positive.sum(dim=0)).sum(dim=0)  # n_c over the global batch
    attracted = squared_distances(x, centroid_gradient_scaled(c, counts))
    attract = global_mean((positive * attracted).sum() / 2.0, positive.sum())
    negative = squared_distances(x, c) * (1.0 - positive)
    local = torch.stack([negative.sum(), negative.new_tensor(float(negative.numel()))])
    total_sum, total_count = gather_stack(local).sum(dim=0)
    repel = (margin - total_sum / total_count.clamp(min=1.0)).clamp(0.0, 1e6)
    return {"centroid": attract + repel_weight * repel, "attract": attract, "repel": repel}


class OLTRCriterion(Criterion):
    """BCE on the logits, plus ``feature_weight`` x the discriminative centroid loss in
    stage 2. Terms: total, bce, centroid, attract, repel (the last three 0 in stage 1).

    Centroid memory (buffers: ``state_dict`` carries it): in stage 1, while training, each
    forward adds the (detached) direct features of every image to the sums of each of its
    positive classes; ``end_epoch`` sums them over ranks and sets ``centroid_means`` (C, D)
    and ``centroid_valid`` (C,) (a class without a positive that epoch keeps its earlier
    mean). ``set_epoch`` at the first stage-2 epoch (``stage2_epoch``) hands them to the
    bound model (``bind``), which starts its meta-embedding; once started (the model's
    ``meta_ready`` buffer) nothing is recomputed, so a resumed run continues exactly.
    """

    batch_level = True  # per-class counts and centroid distances over the batch

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        stage2_epoch: int,
        *,
        feature_weight: float = 0.01,
        repel_weight: float = 0.01,
        margin: float = 10.0,
    ) -> None:
        super().__init__()
        if stage2_epoch < 1:
            raise ValueError(f"stage2_epoch must be >= 1 (stage 1 first), got {stage2_epoch}")
        self.num_classes, self.feature_dim, self.stage2_epoch = (
            num_classes,
            feature_dim,
            stage2_epoch,
        )
        self.feature_weight, self.repel_weight, self.margin = feature_weight, repel_weight, margin
        self.epoch = 0
        self._model: tuple = ()
        self.register_buffer("epoch_sums", torch.zeros(num_classes, feature_dim))
        self.register_buffer("epoch_counts", torch.zeros(num_classes))
        self.register_buffer("centroid_means", torch.zeros(num_classes, feature_dim))
        self.register_buffer("centroid_valid", torch.zeros(num_classes, dtype=torch.bool))

    def bind(self, model) -> OLTRCriterion:
        """The model whose meta-embedding this criterion starts (kept out of the module
        tree and of ``state_dict``)."""
        self._model = (model,)
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if epoch >= self.stage2_epoch and self._model and not self._model[0].in_stage2:
            self._model[0].start_meta_embedding(self.centroid_means, self.centroid_valid)

    def forward(self, output, targets: Tensor) -> dict[str, Tensor]:
        features = getattr(output, "features", None)
        if features is None:
            raise ValueError("OLTRCriterion needs OLTRModel's output (features)")
        logits, y = prepare_logits(output.logits, targets, "OLTRCriterion")
        bce = global_entry_mean(
            torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        )
        if output.centroids is None:  # stage 1
            if self.training:
                self._accumulate(features, y)
            zero = torch.zeros((), device=bce.device)
            return {"total": bce, "bce": bce, "centroid": zero, "attract": zero, "repel": zero}
        terms = discriminative_centroid_loss(
            features, y, output.centroids, margin=self.margin, repel_weight=self.repel_weight
        )
        return {"total": bce + self.feature_weight * terms["centroid"], "bce": bce, **terms}

    @torch.no_grad()
    def _accumulate(self, features: Tensor, targets: Tensor) -> None:
        positive = (targets > 0).float()
        self.epoch_sums += positive.t() @ features.detach().float()
        self.epoch_counts += positive.sum(dim=0)

    @torch.no_grad()
    def end_epoch(self, all_reduce: AllReduce | None = None) -> None:
        """After a stage-1 epoch: the class means of its features, summed over ranks."""
        if self.epoch >= self.stage2_epoch:
            return
        packed = torch.cat([self.epoch_sums, self.epoch_counts[:, None]], dim=1)
        if all_reduce is not None:
            reduced = all_reduce(packed)
            packed = packed if reduced is None else reduced
        sums, counts = packed[:, :-1], packed[:, -1]
        seen = counts > 0
        means = sums / counts.clamp(min=1)[:, None]
        self.centroid_means.copy_(torch.where(seen[:, None], means, self.centroid_means))
        self.centroid_valid |= seen
        self.epoch_sums.zero_()
        self.epoch_counts.zero_()
