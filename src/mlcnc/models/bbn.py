"""BBN, the bilateral-branch network (Zhou et al., CVPR 2020), adapted to multi-label.

Facts from the paper and its code (``Megvii-Nanjing/BBN``):

- Architecture (``BBN: lib/backbone/resnet.py``, ``BBN_ResNet``; ``lib/net/network.py``):
  the ResNet up to the last residual block is shared; the conventional-learning branch and
  the re-balancing branch are one residual block each (``cb_block``, ``rb_block``), each
  followed by global average pooling; one ``nn.Linear(2F, C)`` with bias classifies the
  concatenation, i.e. W_c f_c + W_r f_r + b with W = [W_c, W_r].
- Samplers: the conventional branch reads the uniform sampler, the re-balancing branch the
  reversed sampler (``mlcnc.data.samplers.ReversedSampler``); one image of each per sample
  (``BBN: lib/dataset/iNaturalist.py``, ``dual_sample``).
- Cumulative learning (``BBN: lib/core/combiner.py``, ``bbn_mix``): alpha = 1 - (T /
  T_max)^2 with T the epoch, 0-based here (the code's ``(epoch - 1) / div_epoch`` with
  1-based epochs; its div_epoch is T_max except 100 / 200 for 90 / 180 epochs, which is
  ``alpha_epochs`` here). Training logits z = 2 [alpha W_c f_c + (1 - alpha) W_r f_r] + b
  (the code's ``2 * torch.cat((l * feature_a, (1 - l) * feature_b))``; the paper writes it
  without the 2, ``feature_scale`` sets it) and the loss alpha L(z, y_c) + (1 - alpha)
  L(z, y_r), y_c / y_r the labels of the uniform / reversed image.
- Test (``BBN: lib/core/function.py``, ``valid_model``): both branches on the same image,
  concatenated without weights, z = W_c f_c + W_r f_r + b, which is the training formula
  with alpha = 0.5 and the factor 2.

Multi-label: L is the sigmoid binary cross-entropy, the mean over the B x C entries (BBN
uses softmax cross-entropy). Choices where the code gives none: both branch blocks start
from the pretrained last block of ``layer4`` (BBN's loader would not load ImageNet weights
into ``cb_block`` / ``rb_block``); the two images go through the shared layers in two
separate passes, as BBN's two ``model(...)`` calls (BatchNorm sees each half separately).
On a timm EfficientNet-family backbone (``models.branches.split_backbone``) each branch is
the last inverted-residual block and the 1x1 head convolution, the analogue of the last
residual block. Both BCE terms are means over the global batch (exact under DDP); the loss is
``mlcnc.losses.bbn.BBNCriterion``.

Training-loop contract: the loader gives paired batches (``mlcnc.data.paired``), images
(B, 2, 3, H, W) and targets (B, 2, C), and the loop calls ``model.set_epoch(epoch)`` before
each training epoch (alpha); evaluation feeds plain (B, 3, H, W) batches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlcnc.models.branches import (
    BBNOutput,
    copy_module,
    global_average_pool,
    paired_images,
    split_backbone,
)


def bbn_alpha(epoch: int, alpha_epochs: int) -> float:
    """Cumulative-learning weight alpha = 1 - (epoch / alpha_epochs)^2, epoch 0-based;
    1 in the first epoch, decreasing to 0 at epoch ``alpha_epochs`` (0 after it)."""
    if alpha_epochs < 1:
        raise ValueError(f"alpha_epochs must be >= 1, got {alpha_epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return 1.0 - (min(epoch, alpha_epochs) / alpha_epochs) ** 2


class BBNModel(nn.Module):
    """BBN on a torchvision ResNet or a timm EfficientNet-family model (module docstring).

    forward(images): paired (B, 2, 3, H, W) -> mixed logits with the epoch's alpha;
    plain (B, 3, H, W) -> the test-time logits (both branches, alpha 0.5). Returns a
    ``BBNOutput``. ``alpha_epochs``: T_max of the cumulative learning (the training epochs).
    """

    def __init__(
        self,
        num_classes: int,
        alpha_epochs: int,
        backbone: str = "resnet50",
        pretrained: bool | str = True,
        feature_scale: float = 2.0,
        test_alpha: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        bbn_alpha(0, alpha_epochs)  # validates
        self.trunk, block, width = split_backbone(backbone, pretrained, "block")
        self.conventional = block
        self.rebalancing = copy_module(block)
        self.classifier = nn.Linear(2 * width, num_classes)
        self.num_classes = num_classes
        self.num_features = 2 * width
        self.alpha_epochs = int(alpha_epochs)
        self.feature_scale = float(feature_scale)
        self.test_alpha = float(test_alpha)
        self.alpha = 1.0
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        """Set alpha for training epoch ``epoch`` (0-based); the loop calls it every epoch."""
        self.alpha = bbn_alpha(epoch, self.alpha_epochs)
        self._epoch_set = True

    def mix(self, f_c: Tensor, f_r: Tensor, alpha: float) -> Tensor:
        """z = classifier(feature_scale * [alpha f_c, (1 - alpha) f_r]), (B, C)."""
        return self.classifier(
            self.feature_scale * torch.cat([alpha * f_c, (1.0 - alpha) * f_r], dim=1)
        )

    def forward(self, images: Tensor, return_attention: bool = False) -> BBNOutput:
        if return_attention:
            raise ValueError("BBNModel has no attention maps")
        pair = paired_images(images)
        if pair is None:
            shared = self.trunk(images)
            f_c = global_average_pool(self.conventional(shared))
            f_r = global_average_pool(self.rebalancing(shared))
            return BBNOutput(logits=self.mix(f_c, f_r, self.test_alpha))
        if self.training and not self._epoch_set:
            raise RuntimeError(
                "BBNModel: call model.set_epoch(epoch) before each training epoch (it sets the "
                "cumulative-learning alpha)"
            )
        uniform, reversed_ = pair
        f_c = global_average_pool(self.conventional(self.trunk(uniform)))
        f_r = global_average_pool(self.rebalancing(self.trunk(reversed_)))
        return BBNOutput(logits=self.mix(f_c, f_r, self.alpha), alpha=self.alpha)
