"""CLIP towers through open_clip (``open_clip_torch``): image towers as mlcnc backbones and
the text tower for label embeddings (spec vlm-spec.md 4.1, 4.2).

A backbone name ``open_clip:<config>[:<output>]`` builds open_clip's model ``<config>``
(``RN50-quickgelu`` and ``ViT-B-16-quickgelu`` for OpenAI's weights; ``RN50`` /
``ViT-B-16`` for weights trained with GELU) and keeps its image tower. ``<output>``:

- ``map`` (default): the last spatial map, what MLC-NC's cross-attention reads: RN50
  ``layer4`` (B, 2048, H/32, W/32) before the attention pool; ViT the last block's patch
  tokens after ``ln_post`` (B, width, H/16, W/16), class token dropped.
- ``pooled``: CLIP's pooled joint embedding ``encode_image`` as a 1 x 1 map (B, d, 1, 1), so
  a linear head's average pooling reads exactly CLIP's image embedding.
- ``dense``: dense tokens in CLIP's joint space (B, d, h, w): RN50 each position through
  the attention pool's value and output projections ``c_proj(v_proj(f))`` (MaskCLIP; the
  pool's positional embedding is *not* added), ViT ``ln_post(patch tokens) @ proj``.

Weights (``pretrained``): False = random init; True = open_clip's own download of the tag
``openai`` (Hugging Face hub; needs the network); a path = a local file (a state dict of
the whole CLIP model or ``.safetensors``), every key must load. A machine without the
network and without the file gets one line naming the file and where to put it
(``ClipWeightsError``). ``mlcnc-tiny-rn`` and ``mlcnc-tiny-vit`` are tiny configs (32 px,
embedding width 16) registered here for tests and CPU smoke runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mlcnc.schema import ConfigError

PREFIX = "open_clip:"
OUTPUTS = ("map", "pooled", "dense")
Output = Literal["map", "pooled", "dense"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's own normalisation statistics (``data.normalize=clip``)."""

DEFAULT_TEMPLATES = ("a photo of a {}.",)
"""The label prompt of spec 4.4 B (a template ensemble can be given instead)."""

_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "mlcnc-tiny-rn": {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
        "text_cfg": _TEXT,
    },
    "mlcnc-tiny-vit": {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 8
        },
        "text_cfg": _TEXT,
    },
}  # fmt: skip
"""Tiny random-weight CLIP configs (tests, CPU smoke runs): not for real training."""


class ClipWeightsError(ConfigError):
    """CLIP weights that cannot be found or fetched (a one-line user error)."""


def _open_clip() -> Any:
    try:
        import open_clip
        from open_clip import factory
    except ImportError as error:  # pragma: no cover - a core dependency
        raise ConfigError(
            f"CLIP backbones need open_clip_torch ({error}): pip install open_clip_torch==3.3.0"
        ) from None
    for name, cfg in TINY_CONFIGS.items():
        factory._MODEL_CONFIGS.setdefault(name, cfg)
    return open_clip


def is_clip_name(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_clip_name(name: str) -> tuple[str, Output]:
    """``open_clip:<config>[:<output>]`` -> (config, output)."""
    rest = name.removeprefix(PREFIX)
    config, _, output = rest.partition(":")
    output = output or "map"
    if output not in OUTPUTS:
        raise ConfigError(
            f"backbone {name!r}: unknown CLIP output {output!r}; one of {', '.join(OUTPUTS)}"
        )
    return config, output  # type: ignore[return-value]


def check_clip_name(name: str) -> str | None:
    """None when ``name`` is a known ``open_clip:`` backbone, else the problem in words."""
    try:
        config, _ = parse_clip_name(name)
    except ConfigError as error:
        return str(error)
    open_clip = _open_clip()
    if config not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(config, open_clip.list_models(), n=3, cutoff=0.5)
        hint = f"; nearest: {', '.join(close)}" if close else ""
        return f"not an open_clip model config (open_clip.list_models()){hint}"
    return None


def clip_embed_dim(config: str) -> int:
    """The joint embedding width d of open_clip config ``config`` (no model built)."""
    cfg = _open_clip().get_model_config(config)
    if cfg is None:
        raise ConfigError(f"unknown open_clip model config {config!r}")
    return int(cfg["embed_dim"])


def weights_hint(config: str) -> str:
    """Where the weights of ``config`` come from, for the one-line error."""
    open_clip = _open_clip()
    tags = open_clip.list_pretrained_tags_by_model(config)
    if "openai" in tags:
        hub = open_clip.get_pretrained_cfg(config, "openai").get("hf_hub", "")
        where = f"the Hugging Face repository {hub.rstrip('/')} (open_model.safetensors)"
    else:
        where = f"open_clip's pretrained tags for {config} ({', '.join(tags) or 'none'})"
    return where


def create_clip(config: str, pretrained: bool | str) -> nn.Module:
    """open_clip's CLIP ``config`` with ``pretrained`` weights (see the module docstring)."""
    open_clip = _open_clip()
    if config not in open_clip.list_models():
        raise ConfigError(f"backbone {PREFIX}{config}: {check_clip_name(PREFIX + config)}")
    if isinstance(pretrained, (str, Path)) and not isinstance(pretrained, bool):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ClipWeightsError(
                f"CLIP weights file not found: {path}; download the {config} weights from "
                f"{weights_hint(config)} and put the file at {path} (or set "
                "method.pretrained to where it is)"
            )
        model = open_clip.create_model(config, pretrained=None)
        try:
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
        except Exception as error:  # any reader error: the file is wrong
            raise ClipWeightsError(
                f"{path}: not CLIP weights for {config} ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:300]})"
            ) from None
        return model
    if pretrained is True:
        try:
            return open_clip.create_model(config, pretrained="openai", require_pretrained=True)
        except Exception as error:  # offline, hub errors, ...
            raise ClipWeightsError(
                f"cannot fetch the OpenAI CLIP weights for {config} ({type(error).__name__}); "
                f"on a machine without the network download them from {weights_hint(config)} "
                "and set method.pretrained=/path/to/open_clip_model.safetensors"
            ) from None
    return open_clip.create_model(config, pretrained=None)


def text_tokenizer(config: str) -> Any:
    """open_clip's tokenizer for ``config`` (the BPE vocabulary ships in the wheel)."""
    return _open_clip().get_tokenizer(config)


class ClipImageBackbone(nn.Module):
    """CLIP's image tower as an mlcnc backbone: ``forward(images) -> (B, F, h, w)``."""

    def __init__(
        self,
        config: str,
        pretrained: bool | str = False,
        output: Output = "map",
        clip_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        clip = clip_model if clip_model is not None else create_clip(config, pretrained)
        self.visual = clip.visual
        self.config, self.output = config, output
        self.embed_dim = int(clip.text_projection.shape[1])
        self.is_resnet = hasattr(self.visual, "attnpool")
        if output in ("pooled", "dense"):
            self.num_features = self.embed_dim
        elif self.is_resnet:
            self.num_features = int(self.visual.attnpool.k_proj.in_features)
        else:
            self.num_features = int(self.visual.transformer.width)

    def _last_map(self, images: Tensor) -> Tensor:
        out = self.visual.forward_intermediates(
            images, indices=1, intermediates_only=True, normalize_intermediates=True
        )
        return out["image_intermediates"][-1]

    def pooled(self, images: Tensor) -> Tensor:
        """CLIP's image embedding (B, d), not normalised."""
        return self.visual(images)

    def forward(self, images: Tensor) -> Tensor:
        if self.output == "pooled":
            return self.pooled(images)[:, :, None, None]
        features = self._last_map(images)
        if self.output == "map":
            return features
        b, _, h, w = features.shape
        tokens = features.flatten(2).transpose(1, 2)  # (B, N, F)
        if self.is_resnet:
            pool = self.visual.attnpool
            dense = pool.c_proj(pool.v_proj(tokens))
        else:
            dense = tokens @ self.visual.proj  # ln_post already applied
        return dense.transpose(1, 2).reshape(b, self.embed_dim, h, w)


def create_clip_backbone(name: str, pretrained: bool | str = False) -> ClipImageBackbone:
    config, output = parse_clip_name(name)
    return ClipImageBackbone(config, pretrained, output)


class FixedTextCLIP(nn.Module):
    """A CLIP classifier whose label embeddings are fixed: the image tower, the (C, d) unit
    label embeddings and the logit scale, without the text tower. What inference and export
    need of a model whose text tower only makes label embeddings (LM-CLIP, LMPT):
    ``forward(images) -> ModelOutput`` with logits exp(s) norm(visual(x)) L^T (B, C)."""

    def __init__(self, visual: nn.Module, label_embeddings: Tensor, logit_scale: Tensor) -> None:
        super().__init__()
        self.visual = visual  # shared with the model it came from, not copied
        self.num_classes = int(label_embeddings.shape[0])
        self.register_buffer("label_embeddings", label_embeddings.detach().float().clone())
        self.register_buffer("logit_scale", logit_scale.detach().float().reshape(()).clone())

    def forward(self, images: Tensor, return_attention: bool = False) -> Any:
        from mlcnc.models.output import ModelOutput

        image = nn.functional.normalize(self.visual(images), dim=-1)
        labels = self.label_embeddings.to(image.dtype)
        return ModelOutput(logits=self.logit_scale.exp().to(image.dtype) * image @ labels.T)


# --------------------------------------------------------------------------- text embeddings
_TEXT_CACHE: dict[str, Tensor] = {}


def _cache_key(config: str, pretrained: bool | str, names: Sequence[str], templates: Sequence[str]):
    text = "\x00".join([config, str(pretrained), *names, "\x01", *templates])
    return hashlib.sha256(text.encode()).hexdigest()


def prompts_for(name: str, templates: Sequence[str]) -> list[str]:
    readable = name.replace("_", " ")
    return [t.format(readable) if "{}" in t else t + readable for t in templates]


@torch.no_grad()
def encode_class_texts(
    clip_model: nn.Module,
    tokenizer: Any,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    chunk: int = 1024,
) -> Tensor:
    """(C, d) unit label embeddings: the mean of each class's normalised template
    embeddings, renormalised (CLIP's prompt ensembling), under ``no_grad``. The C x T
    prompts go through the text tower together, ``chunk`` at a time."""
    was_training = clip_model.training
    clip_model.eval()
    tokens = tokenizer([p for name in class_names for p in prompts_for(name, templates)])
    encoded = torch.cat([clip_model.encode_text(part).float() for part in tokens.split(chunk)])
    clip_model.train(was_training)
    emb = nn.functional.normalize(encoded, dim=-1).reshape(len(class_names), len(templates), -1)
    return nn.functional.normalize(emb.mean(1), dim=-1)


def class_text_embeddings(
    config: str,
    pretrained: bool | str,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    clip_model: nn.Module | None = None,
) -> Tensor:
    """``encode_class_texts`` built once per process for (config, weights, names,
    templates), and for pretrained weights once per machine (``models.text_cache``: under
    ``$MLCNC_HOME/text_embeddings``): callers store the result as a buffer so checkpoints
    carry it and inference needs no text tower."""
    from mlcnc.models import text_cache

    key = _cache_key(config, pretrained, class_names, templates)
    if key in _TEXT_CACHE:
        return _TEXT_CACHE[key].clone()
    weights = text_cache.weights_id(pretrained)
    metadata = path = None
    if weights is not None:
        metadata = text_cache.cache_metadata(config, weights, class_names, templates)
        path = text_cache.cache_file(metadata)
        cached = text_cache.load_cached(path, metadata)
        if cached is not None:
            _TEXT_CACHE[key] = cached
            return cached.clone()
    model = clip_model if clip_model is not None else create_clip(config, pretrained)
    _TEXT_CACHE[key] = encode_class_texts(model, text_tokenizer(config), class_names, templates)
    if path is not None and metadata is not None:
        text_cache.save_cached(path, _TEXT_CACHE[key], metadata)
    return _TEXT_CACHE[key].clone()


def placeholder_class_names(num_classes: int) -> list[str]:
    """Names for a model rebuilt without its data (a checkpoint restores the embeddings)."""
    return [f"class {i}" for i in range(num_classes)]


# --------------------------------------------------------------------------- CLIP label geometry
def procrustes_etf(text_embeddings: Tensor) -> Tensor:
    """The (d, C) simplex ETF nearest to CLIP's (C, d) label embeddings T (vlm-spec 4.4 B).

    Orthogonal Procrustes: U = P Q^T from the SVD T^T = P S Q^T (U (d, C) with orthonormal
    columns, maximising tr(U^T T^T)), then V = sqrt(C/(C-1)) U (I - 11^T/C), the construction
    of ``mlcnc.etf.simplex_etf`` with U from CLIP instead of a random QR: unit columns,
    pairwise cosine -1/(C-1). Computed in float64, returned float32. Needs C <= d.
    """
    t = text_embeddings.detach().to(torch.float64)
    c, d = t.shape
    if c < 2 or c > d:
        raise ValueError(f"procrustes_etf needs 2 <= C <= d, got C={c}, d={d}")
    p, _, qt = torch.linalg.svd(t.T, full_matrices=False)  # (d, C), (C,), (C, C)
    u = p @ qt
    centering = torch.eye(c, dtype=torch.float64) - 1.0 / c
    return ((c / (c - 1)) ** 0.5 * u @ centering).float()


def isometry(dim_in: int, dim_out: int, seed: int = 0) -> Tensor:
    """A fixed seeded (dim_out, dim_in) matrix with orthonormal columns (dim_out >= dim_in):
    lifts vectors from R^dim_in to R^dim_out keeping norms and angles."""
    if dim_out < dim_in:
        raise ValueError(f"cannot lift R^{dim_in} isometrically into R^{dim_out}")
    if dim_out == dim_in:
        return torch.eye(dim_in)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim_out, dim_in, generator=g, dtype=torch.float64))
    return q.float()
