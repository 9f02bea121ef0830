"""URS: collaborative training on uniform and re-balanced samplings (Guo & Wang, CVPR 2021).

"Long-Tailed Multi-Label Visual Recognition by Collaborative Training on Uniform and
Re-balanced Samplings". No code is published; the paper's text was not available here, only
its Figure 2, Eq. (1) (the total loss), Eq. (2) (logit compensation) and the ablation
table, as reproduced in the CENG502 reproduction's README (``bargul/guo2021``,
``readme/img2.png``, ``img5.png``, ``img7.png``, ``img3.png``). What they specify:

- Network (Fig. 2): a shared network phi (ResNet-50 without its last stage), two subnets
  Subnet-U = (f1, GAP, f2) and Subnet-R = (g1, GAP, g2), f1 and g1 copies of the last
  stage, f2 and g2 linear classifiers. The uniform-sampling image x^u goes through both:
  u = f2(f1(phi(x^u))) and the cross output u^ = g2(g1(phi(x^u))); the re-balanced image
  x^r gives r = g2(g1(phi(x^r))) and r^ = f2(f1(phi(x^r))).
- Eq. (1): L = L_cls(u, y^u) + L_cls(r, y^r) + lambda (L_con(u, u^) + L_con(r, r^)).
- Eq. (2), logit compensation: L_cls(u_i, y_i) = -1/K sum_k w_k [y_ik log s(u_ik sigma^p_k
  + mu^p_k) + (1 - y_ik) log(1 - s(u_ik sigma^n_k + mu^n_k))], s the sigmoid, sigma^p,
  mu^p, sigma^n, mu^n learnable per class.
- Ablation: logit consistency and logit compensation are separate switches; "aug-test"
  (test-time augmentation) is reported separately.

Not specified in what could be read, and the choice made here (each is an argument):

- L_con: ``consistency="mse_prob"``, the mean squared difference of the sigmoid
  probabilities over B x C, with gradients into both branches (``"mse_logit"``: of logits).
- lambda: ``consistency_weight=0.1``, the value of the reproduction's configuration
  (not verified against the paper).
- w_k: ``class_weight=None`` (all 1); the paper calls the loss "weighted" without a formula
  in what was read.
- Whether the two branches share the compensation parameters: each has its own here; they
  start at sigma = 1, mu = 0 (plain BCE) and are parameters of the model, so the optimiser
  and DDP see them. The cross outputs u^, r^ enter L_con uncompensated.
- Inference: the compensation needs the label, so it is a training-time loss term; the
  prediction is the mean probability of the two subnets on the test image
  (``logits = logit((s(u) + s(r)) / 2)``; the reproduction's reading: "the predictions of
  two branches are averaged"). No test-time augmentation.
- The re-balanced sampler: "each class has equal probability"; the class-aware sampler
  (``mlcnc.data.samplers.ClassAwareSampler``, 1 image per class draw, epoch length N so it
  pairs with the uniform sampler). Optimiser, schedule, epochs, batch size: not known.
- The two images go through phi in two passes (BatchNorm sees each half separately).
- On a timm EfficientNet-family backbone the subnets' f1 / g1 are every block at the final
  stride plus the 1x1 head convolution (``models.branches.split_backbone``), the analogue
  of ResNet's last stage. L_cls and L_con are means over the global batch (exact under DDP); the loss is
``mlcnc.losses.urs``.

Training-loop contract: paired batches (``mlcnc.data.paired``), images (B, 2, 3, H, W) and
targets (B, 2, C); evaluation feeds plain (B, 3, H, W) batches. No epoch hook.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlcnc.models.branches import (
    TwoBranchOutput,
    copy_module,
    global_average_pool,
    mean_probability_logit,
    paired_images,
    split_backbone,
)


def _identity_compensation(num_classes: int) -> Tensor:
    """(4, C): sigma_p = 1, mu_p = 0, sigma_n = 1, mu_n = 0 (no compensation)."""
    rows = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(4, 1)
    return rows.expand(4, num_classes).clone()


class URSModel(nn.Module):
    """URS's two-subnet network on a torchvision ResNet or a timm EfficientNet-family model
    (module docstring).

    forward(images): paired (B, 2, 3, H, W) -> u, u^, r, r^ and the compensation
    parameters; plain (B, 3, H, W) -> the averaged prediction. Returns ``TwoBranchOutput``.
    ``compensation``: learnable logit compensation (False: fixed identity, for the
    ablation without it).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: bool | str = True,
        compensation: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.shared, stage, width = split_backbone(backbone, pretrained, "stage")
        self.uniform_stage = stage
        self.rebalanced_stage = copy_module(stage)
        self.uniform_fc = nn.Linear(width, num_classes)
        self.rebalanced_fc = nn.Linear(width, num_classes)
        self.num_classes = num_classes
        self.num_features = width
        identity = _identity_compensation(num_classes)
        if compensation:
            self.compensation_u = nn.Parameter(identity.clone())
            self.compensation_r = nn.Parameter(identity.clone())
        else:
            self.register_buffer("compensation_u", identity.clone())
            self.register_buffer("compensation_r", identity.clone())

    def uniform_branch(self, shared: Tensor) -> Tensor:
        """Subnet-U on phi's output: f2(GAP(f1(.))), (B, C)."""
        return self.uniform_fc(global_average_pool(self.uniform_stage(shared)))

    def rebalanced_branch(self, shared: Tensor) -> Tensor:
        """Subnet-R on phi's output: g2(GAP(g1(.))), (B, C)."""
        return self.rebalanced_fc(global_average_pool(self.rebalanced_stage(shared)))

    def forward(self, images: Tensor, return_attention: bool = False) -> TwoBranchOutput:
        if return_attention:
            raise ValueError("URSModel has no attention maps")
        pair = paired_images(images)
        if pair is None:
            shared = self.shared(images)
            u, r = self.uniform_branch(shared), self.rebalanced_branch(shared)
            return TwoBranchOutput(
                logits=mean_probability_logit(u, r), uniform_logits=u, rebalanced_logits=r
            )
        shared_u, shared_r = self.shared(pair[0]), self.shared(pair[1])
        u, u_cross = self.uniform_branch(shared_u), self.rebalanced_branch(shared_u)
        r, r_cross = self.rebalanced_branch(shared_r), self.uniform_branch(shared_r)
        return TwoBranchOutput(
            logits=mean_probability_logit(u, u_cross),
            uniform_logits=u,
            uniform_cross=u_cross,
            rebalanced_logits=r,
            rebalanced_cross=r_cross,
            compensation_u=self.compensation_u,
            compensation_r=self.compensation_r,
        )
