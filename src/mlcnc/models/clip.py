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

Weights (``pretrained``): False = random init; True = the tag ``openai`` as open_clip
downloads it (Hugging Face hub), read from the Hugging Face cache without any request when
it is there, else downloaded when the hub can be reached (``models.backbone.quiet_hub``,
the mechanism of timm's weights); a path = a local file (a state dict of the whole CLIP
model or ``.safetensors``), every key must load. Weights that cannot be found, fetched or
read give one line naming the file and where to put it (``ClipWeightsError``, a data
error: exit 1). open_clip's own log lines are dropped (``quiet_open_clip``): mlcnc says
what went wrong, and a model rebuilt to load a checkpoint is not "initialized randomly".

Input size: a tower whose positional embedding is used (ViT always; RN's attention pool,
read by ``pooled`` and by LM-CLIP / LMPT) reads images of its config's size only; another
size is refused in one line naming ``data.image_size`` (``check_clip_input``; nothing is
interpolated). RN ``map`` / ``dense`` read any size. ``mlcnc-tiny-rn`` and
``mlcnc-tiny-vit`` are tiny configs (32 px, embedding width 16) registered here for tests
and CPU smoke runs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mlcnc.data.readers import DataError
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


class ClipWeightsError(DataError):
    """CLIP weights that cannot be found, fetched or read (a one-line data error, exit 1, as
    for a timm backbone's weights)."""


class _DropOpenClipRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname


@contextmanager
def quiet_open_clip() -> Iterator[None]:
    """open_clip logs on the root logger ("Parsing model identifier", "Model initialized
    randomly", download errors): drop its records, keep everyone else's."""
    root, drop = logging.getLogger(), _DropOpenClipRecords()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


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


def openai_weights_file(config: str) -> tuple[str, str] | None:
    """(Hugging Face repository, file) open_clip downloads for ``config``'s tag ``openai``
    (the ``.safetensors`` form, which it tries first); None without that tag."""
    import posixpath

    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    open_clip = _open_clip()
    if "openai" not in open_clip.list_pretrained_tags_by_model(config):
        return None
    repo, filename = posixpath.split(open_clip.get_pretrained_cfg(config, "openai")["hf_hub"])
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        filename = HF_SAFE_WEIGHTS_NAME
    elif filename.endswith((".bin", ".pth")):
        filename = filename[:-4] + ".safetensors"
    return repo, filename


def weights_hint(config: str) -> str:
    """Which file holds ``config``'s OpenAI weights and how to pass it, for one-line errors."""
    found = openai_weights_file(config)
    if found is None:
        tags = ", ".join(_open_clip().list_pretrained_tags_by_model(config)) or "none"
        return f"open_clip has no OpenAI weights for {config} (its tags: {tags})"
    repo, filename = found
    return (
        f"download https://huggingface.co/{repo}/resolve/main/{filename} and pass it with "
        f"method.pretrained=/path/to/{filename}"
    )


def create_clip(config: str, pretrained: bool | str) -> nn.Module:
    """open_clip's CLIP ``config`` with ``pretrained`` weights (see the module docstring)."""
    open_clip = _open_clip()
    if config not in open_clip.list_models():
        raise ConfigError(f"backbone {PREFIX}{config}: {check_clip_name(PREFIX + config)}")
    if isinstance(pretrained, (str, Path)) and not isinstance(pretrained, bool):
        return _clip_from_file(config, Path(pretrained).expanduser())
    if pretrained is True:
        return _openai_clip(config)
    with quiet_open_clip():
        return open_clip.create_model(config, pretrained=None)


def check_clip_weights_file(config: str, path: Path) -> None:
    """``method.pretrained`` as a path must be a file: the first check of ``_clip_from_file``,
    made by ``train --dry-run`` too (``models.backbone.check_pretrained_file``)."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ClipWeightsError(
            f"method.pretrained={path}: the CLIP weights file {what}; give the path of the "
            f"{config} weights file ({weights_hint(config)})"
        )


def _clip_from_file(config: str, path: Path) -> nn.Module:
    check_clip_weights_file(config, path)
    open_clip = _open_clip()
    with quiet_open_clip():
        model = open_clip.create_model(config, pretrained=None)
        try:
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
        except Exception as error:  # any reader error: the file is wrong
            raise ClipWeightsError(
                f"method.pretrained={path}: {_bad_file(path, config, error)}"
            ) from None
    return model


def _bad_file(path: Path, config: str, error: BaseException) -> str:
    """What is wrong with a weights file open_clip could not load, in words (never torch's
    advice to unpickle it with ``weights_only=False``)."""
    text = str(error).strip()
    if text.startswith("Error(s) in loading state_dict"):
        detail = next((ln.strip() for ln in text.splitlines()[1:] if ln.strip()), "")
        return f"its weights do not fit CLIP {config} ({detail[:240]})"
    with open(path, "rb") as f:
        head = f.read(8)
    kind = "a .safetensors file" if path.suffix == ".safetensors" else "a PyTorch state-dict file"
    return (
        f"not {kind} of CLIP weights (it starts with {head!r}: {type(error).__name__}); "
        f"give the {config} weights file ({weights_hint(config)})"
    )


def _openai_clip(config: str) -> nn.Module:
    """CLIP ``config`` with the tag ``openai``: from the Hugging Face cache without any
    request when it is there; else downloaded, when the hub can be reached; else one line."""
    import huggingface_hub.constants as hub

    from mlcnc.models.backbone import hub_reachable, quiet_hub

    open_clip = _open_clip()
    if openai_weights_file(config) is None:
        raise ConfigError(
            f"method.pretrained=true: {weights_hint(config)}; give a weights file with "
            "method.pretrained=PATH or train from scratch with method.pretrained=false"
        )
    build = {"pretrained": "openai", "require_pretrained": True}
    try:
        with quiet_hub(offline=True), quiet_open_clip():
            return open_clip.create_model(config, **build)
    except Exception:  # not in the cache
        pass
    if hub.HF_HUB_OFFLINE or not hub_reachable():
        raise ClipWeightsError(
            f"method.pretrained=true: the OpenAI weights of CLIP {config} are not in the "
            f"Hugging Face cache ({hub.HF_HUB_CACHE}) and {hub.ENDPOINT} cannot be reached; "
            f"on a machine with network {weights_hint(config)}"
        ) from None
    try:
        with quiet_hub(offline=False), quiet_open_clip():
            return open_clip.create_model(config, **build)
    except Exception as error:  # the hub refused or the download broke
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise ClipWeightsError(
            f"method.pretrained=true: cannot fetch the OpenAI weights of CLIP {config} "
            f"({reason}); {weights_hint(config)}"
        ) from None


def check_clip_input(visual: nn.Module, config: str, images: Tensor) -> None:
    """Refuse images of another size than the tower's positional embedding fixes (call it
    where that embedding is read: ViT always, RN's attention pool)."""
    size = getattr(visual, "image_size", None)
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    got = tuple(int(n) for n in images.shape[-2:])
    if size and got != size:
        raise ValueError(
            f"CLIP tower {config} reads {size[0]}x{size[1]} images only (its positional "
            f"embedding is fixed; nothing is interpolated), got {got[0]}x{got[1]}: set "
            f"data.image_size={size[0]}"
        )


def text_tokenizer(config: str) -> Any:
    """open_clip's tokenizer for ``config`` (the BPE vocabulary ships in the wheel)."""
    open_clip = _open_clip()
    with quiet_open_clip():
        return open_clip.get_tokenizer(config)


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
        if not self.is_resnet:  # the ViT adds its positional embedding
            check_clip_input(self.visual, self.config, images)
        out = self.visual.forward_intermediates(
            images, indices=1, intermediates_only=True, normalize_intermediates=True
        )
        return out["image_intermediates"][-1]

    def pooled(self, images: Tensor) -> Tensor:
        """CLIP's image embedding (B, d), not normalised."""
        check_clip_input(self.visual, self.config, images)
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
