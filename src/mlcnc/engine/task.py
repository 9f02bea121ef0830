"""The task Fabric trains: the model and its loss as one module (``ModelWithLoss``)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mlcnc.engine.evaluation import inference_precision
from mlcnc.losses.base import Criterion


class ModelWithLoss(nn.Module):
    """What Fabric / DDP wrap for training: ``forward(images, targets, sample_indices)`` returns
    the loss dict.

    A model whose forward needs each image's row in the training set (LMPT reads the image's
    caption by it) declares ``uses_sample_indices = True`` and receives them as
    ``sample_indices``; every other model is called with the images alone.

    DDP then finds the parameters that a loss leaves out (MLC-NC's projections and
    temperature during the paper warm-up) by following the graph back from the loss, not from
    the model outputs. The criterion runs in float32 (autocast off) and is kept out of the
    module tree: its buffers (prototype sums) are per-rank state that DDP must not broadcast.
    """

    def __init__(self, model: nn.Module, criterion: Criterion, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        self._criterion = (criterion,)  # a tuple hides it from the module tree
        self.channels_last = channels_last

    def forward(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        sample_indices: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        if getattr(self.model, "uses_sample_indices", False):
            if sample_indices is None:
                raise ValueError(f"{type(self.model).__name__} needs the images' sample indices")
            output = self.model(images, sample_indices=sample_indices)
        else:
            output = self.model(images)
        # Whatever the precision (bf16 autocast, bf16 / float64 weights), the criterion and
        # its float32 buffers see float32 tensors, and tensors it creates are float32.
        output = dataclasses.replace(
            output,
            **{
                f.name: value.float()
                for f in dataclasses.fields(output)
                if isinstance(value := getattr(output, f.name), torch.Tensor)
                and value.is_floating_point()
            },
        )
        with inference_precision(images.device, torch.float32):
            return self._criterion[0](output, targets.float())
