"""ML-GCN (Chen et al., CVPR 2019): classifiers from a GCN over the label graph.

Facts from the paper and its code (``megvii-research/ML-GCN``), as used here:

- Correlation matrix (``ML-GCN: util.py``, ``gen_A``): from the training labels, P_ij =
  M_ij / N_i (M the co-occurrence counts of distinct classes, zero diagonal; N_i the
  images of class i), binarised A_ij = 1 if P_ij >= tau (tau 0.4: ``demo_*_gcn.py``,
  ``t=0.4``), then re-weighted by Eq. (8) as corrected in the repository's README
  (``ML-GCN: data/svg.svg``): A'_ij = p A_ij / sum_{i' != j} A_i'j for i != j and
  A'_ii = 1 - p, p = 0.2 (the paper). The code differs: p = 0.25, the diagonal is 1 (not
  1 - p) and the column sum gets + 1e-6; ``self_weight=1.0, p=0.25`` reproduces it (up to
  the 1e-6).
- Normalisation (``ML-GCN: util.py``, ``gen_adj``): A^ = D^-1/2 A'^T D^-1/2 with D the
  diagonal of the row sums of A' (the code's ``(A D)^T D``). The graph is fixed.
- GCN (``ML-GCN: models.py``, ``GraphConvolution``, ``GCNResnet``): H1 = LeakyReLU_0.2(A^ E
  W1), W = A^ H1 W2, two layers without bias, widths d -> 1024 -> F, weights drawn from
  U(-1/sqrt(out), 1/sqrt(out)); no activation after the second layer.
- Image feature: global max pooling of the last feature map (the code's MaxPool2d(14, 14)
  at 448 x 448; the README's GMP), logits = x W^T (B, C), no bias.
- Loss ``nn.MultiLabelSoftMarginLoss`` (the mean BCE over B x C: ``BCECriterion``); SGD
  lr 0.1, momentum 0.9, weight decay 1e-4, backbone at lr x 0.1 (``lrp``; the engine's
  ``optim.backbone_lr_scale``), gradient-norm clip 10 (``ML-GCN: engine.py``); ResNet-101
  at 448 x 448 in the paper (``configs/voc_lt_mlgcn.yaml``).

Node features E (C, d): ML-GCN's are 300-d GloVe vectors of the class names, which cannot
be downloaded here. ``load_node_features`` reads a user file (.npy, or .txt / .csv of C
rows of d floats; never pickle). Without one the default is one-hot (E = I_C), DB's
fallback in its ML-GCN head (``DB: mllt/models/heads/gcn_head.py``, ``gen_word2vec``).
With one-hot inputs the first layer's weight W1 (C x 1024) is a free embedding per class,
so the only prior left is the graph A^: classes start unrelated and are coupled only by
propagation over co-occurring classes. Word vectors add a semantic prior (classes with
related names start with related classifiers); results with one-hot inputs are therefore
ML-GCN without that prior and should be reported as such. ``"etf"`` (a simplex ETF, C x C)
spans the same
space as one-hot minus the all-ones direction, so it changes the initialisation and the
effect of weight decay, not what the model can express beyond that one direction.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mlcnc.data.cooccurrence import conditional_probabilities
from mlcnc.etf import simplex_etf
from mlcnc.models.backbone import create_backbone
from mlcnc.models.output import ModelOutput


def mlgcn_correlation(
    labels: np.ndarray, tau: float = 0.4, p: float = 0.2, self_weight: float | None = None
) -> np.ndarray:
    """ML-GCN's re-weighted correlation matrix A' (C, C) from the (N, C) training labels.

    A_ij = [P_ij >= tau] for i != j (P from ``conditional_probabilities``), then
    A'_ij = p A_ij / sum_{i' != j} A_i'j (0 for a column without edges), A'_ii = 1 - p
    (``self_weight`` overrides the diagonal: the code uses 1).
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    prob = conditional_probabilities(labels)
    edges = (prob >= tau).astype(np.float64)
    np.fill_diagonal(edges, 0.0)
    column = edges.sum(axis=0, keepdims=True)
    weighted = np.divide(p * edges, column, out=np.zeros_like(edges), where=column > 0)
    np.fill_diagonal(weighted, 1.0 - p if self_weight is None else self_weight)
    return weighted


def normalized_adjacency(correlation: np.ndarray | Tensor) -> Tensor:
    """A^ = D^-1/2 A^T D^-1/2, D_ii = sum_j A_ij (``ML-GCN: util.py``, ``gen_adj``), float32."""
    a = torch.as_tensor(np.asarray(correlation, dtype=np.float64))
    degree = a.sum(dim=1)
    if (degree <= 0).any():
        raise ValueError("normalized_adjacency: every row of the correlation needs a positive sum")
    d = torch.diag(degree.pow(-0.5))
    return (d @ a.T @ d).float()


def load_node_features(path: str | Path, num_classes: int) -> np.ndarray:
    """Class-name embeddings (C, d) from ``path``: .npy (no pickle) or .txt / .csv (C rows
    of d numbers, comma or whitespace separated), row c for class c of the split."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"node-feature file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            features = np.load(path, allow_pickle=False)
        elif suffix in (".txt", ".csv"):
            text = path.read_text()
            delimiter = "," if "," in text else None
            features = np.loadtxt(path, delimiter=delimiter, ndmin=2)
        else:
            raise ValueError(f"{path}: node features must be .npy, .txt or .csv (not pickle)")
    except ValueError as err:
        if "node features must be" in str(err):
            raise
        raise ValueError(f"{path}: cannot read node features ({err})") from None
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] != num_classes:
        raise ValueError(
            f"{path}: node features must be {num_classes} rows (one per class) of d numbers, "
            f"got shape {features.shape}"
        )
    if not np.isfinite(features).all():
        raise ValueError(f"{path}: node features contain non-finite values")
    return features


class GraphConvolution(nn.Module):
    """H' = A^ H W, W (in, out) without bias, initialised U(-1/sqrt(out), 1/sqrt(out))."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(out_features)
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))

    def forward(self, nodes: Tensor, adjacency: Tensor) -> Tensor:
        """nodes (C, in), adjacency (C, C) -> (C, out)."""
        return adjacency @ (nodes @ self.weight)


class MLGCNModel(nn.Module):
    """Backbone -> global max (or average) pool -> logits x W^T with W = GCN(E, A^) (C, F).

    correlation: A' (C, C) from ``mlgcn_correlation(train_labels)``.
    node_features: ``"onehot"`` (default), ``"etf"``, an array (C, d) or a file path
    (``load_node_features``); kept as a fixed buffer, as word vectors are fixed inputs.
    """

    def __init__(
        self,
        num_classes: int,
        correlation: np.ndarray | Tensor,
        backbone: str = "resnet101",
        pretrained: bool | str = True,
        node_features: str | Path | np.ndarray = "onehot",
        hidden_dim: int = 1024,
        negative_slope: float = 0.2,
        pooling: str = "max",
    ) -> None:
        super().__init__()
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        correlation = np.asarray(correlation, dtype=np.float64)
        if correlation.shape != (num_classes, num_classes):
            raise ValueError(
                f"correlation must be ({num_classes}, {num_classes}), got {correlation.shape}"
            )
        self.backbone = create_backbone(backbone, pretrained)
        self.num_features: int = self.backbone.num_features
        self.num_classes = num_classes
        self.pooling = pooling
        features = self._node_features(node_features, num_classes)
        self.register_buffer("node_features", torch.as_tensor(features).float())
        self.register_buffer("adjacency", normalized_adjacency(correlation))
        self.gc1 = GraphConvolution(features.shape[1], hidden_dim)
        self.gc2 = GraphConvolution(hidden_dim, self.num_features)
        self.activation = nn.LeakyReLU(negative_slope)

    @staticmethod
    def _node_features(spec: str | Path | np.ndarray, num_classes: int) -> np.ndarray:
        if isinstance(spec, np.ndarray):
            if spec.ndim != 2 or spec.shape[0] != num_classes:
                raise ValueError(f"node_features must be ({num_classes}, d), got {spec.shape}")
            return spec.astype(np.float64)
        if spec == "onehot":
            return np.eye(num_classes)
        if spec == "etf":
            if num_classes < 2:
                raise ValueError("ETF node features need at least 2 classes")
            generator = torch.Generator().manual_seed(0)
            return simplex_etf(num_classes, num_classes, generator).T.double().numpy()
        return load_node_features(spec, num_classes)

    def classifiers(self) -> Tensor:
        """The GCN's class classifiers W (C, F)."""
        hidden = self.activation(self.gc1(self.node_features, self.adjacency))
        return self.gc2(hidden, self.adjacency)

    def forward_features(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> pooled image features (B, F)."""
        feature_map = self.backbone(images)
        if self.pooling == "max":
            return feature_map.amax(dim=(2, 3))
        return feature_map.mean(dim=(2, 3))

    def forward(self, images: Tensor, return_attention: bool = False) -> ModelOutput:
        if return_attention:
            raise ValueError("MLGCNModel has no attention maps")
        return ModelOutput(logits=self.forward_features(images) @ self.classifiers().T)
