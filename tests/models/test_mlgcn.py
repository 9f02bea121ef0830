"""ML-GCN: the correlation matrix (corrected Eq. 8 and the code's variant), its normalisation,
the GCN classifiers, node-feature files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlcnc.config import load_config
from mlcnc.engine.optim import build_optimizer
from mlcnc.losses.bce import BCECriterion
from mlcnc.models.mlgcn import (
    MLGCNModel,
    load_node_features,
    mlgcn_correlation,
    normalized_adjacency,
)

# 4 classes: class 0 with 1 in 3 of its 6 images, 1 always with 0, 2 with 3 once, 3 alone.
LABELS = np.array(
    [
        *[[1, 1, 0, 0]] * 3,
        *[[1, 0, 0, 0]] * 3,
        [0, 0, 1, 1],
        *[[0, 0, 1, 0]] * 2,
        [0, 0, 0, 1],
    ]
)


def correlation_reference(labels, tau, p, self_weight=None, code=False) -> np.ndarray:
    c = labels.shape[1]
    n = labels.sum(axis=0)
    a = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            both = sum(1 for row in labels if row[i] and row[j])
            if i != j and n[i] > 0 and both / n[i] >= tau:
                a[i, j] = 1.0
    out = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            col = sum(a[k, j] for k in range(c) if k != j)
            if code:  # gen_A: A * 0.25 / (column sum + 1e-6) + identity
                out[i, j] = a[i, j] * p / (col + 1e-6) + (1.0 if i == j else 0.0)
            elif i == j:
                out[i, j] = 1 - p if self_weight is None else self_weight
            else:
                out[i, j] = p * a[i, j] / col if col > 0 else 0.0
    return out


def test_correlation_matches_corrected_eq8_and_the_code_variant() -> None:
    got = mlgcn_correlation(LABELS, tau=0.4, p=0.2)
    assert np.allclose(got, correlation_reference(LABELS, 0.4, 0.2))
    # P(1|0) = 3/6 >= 0.4, P(0|1) = 1, P(3|2) = 1/3 < 0.4, P(2|3) = 1/2 >= 0.4.
    edges = got - np.diag(np.diag(got)) > 0
    assert edges.tolist() == [
        [False, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
        [False, False, True, False],
    ]
    assert np.allclose(np.diag(got), 0.8)
    code = mlgcn_correlation(LABELS, tau=0.4, p=0.25, self_weight=1.0)
    assert np.allclose(code, correlation_reference(LABELS, 0.4, 0.25, code=True), atol=1e-5)


def test_normalized_adjacency_is_d_at_d() -> None:
    a = mlgcn_correlation(LABELS)
    got = normalized_adjacency(a).double().numpy()
    degree = a.sum(axis=1)
    expected = np.array(
        [[a[j, i] / np.sqrt(degree[i] * degree[j]) for j in range(4)] for i in range(4)]
    )
    assert np.allclose(got, expected, atol=1e-6)


@pytest.fixture(scope="module")
def model() -> MLGCNModel:
    torch.manual_seed(0)
    return MLGCNModel(4, mlgcn_correlation(LABELS), backbone="resnet18", pretrained=False)


def test_logits_are_pooled_features_times_gcn_classifiers(model: MLGCNModel) -> None:
    model.eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feature_map = model.backbone(images)
        pooled = feature_map.amax(dim=(2, 3))
        adj = model.adjacency
        hidden = F.leaky_relu(adj @ (torch.eye(4) @ model.gc1.weight), 0.2)
        classifiers = adj @ (hidden @ model.gc2.weight)
        out = model(images)
    assert classifiers.shape == (4, 512) and out.logits.shape == (2, 4)
    assert torch.allclose(out.logits, pooled @ classifiers.T, atol=1e-4)
    assert torch.equal(model.node_features, torch.eye(4))
    assert model.gc1.weight.abs().max() <= 1 / np.sqrt(1024)


def test_gradients_reach_backbone_and_gcn(model: MLGCNModel) -> None:
    model.train()
    model.zero_grad()
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    loss = BCECriterion()(model(torch.randn(2, 3, 16, 16)), targets)["total"]
    loss.backward()
    for name in ("gc1.weight", "gc2.weight", "backbone.layer4.1.conv2.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert "node_features" not in dict(model.named_parameters())  # fixed inputs
    overrides = ["optim.optimizer=sgd", "optim.lr=0.1", "optim.backbone_lr_scale=0.1"]
    optimizer = build_optimizer(model, load_config("synthetic", overrides).optim)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(model.backbone.conv1.weight)] == pytest.approx(0.01)
    assert lr_of[id(model.gc1.weight)] == lr_of[id(model.gc2.weight)] == pytest.approx(0.1)


def test_node_feature_files(tmp_path) -> None:
    vectors = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    np.save(tmp_path / "glove.npy", vectors)
    np.savetxt(tmp_path / "glove.csv", vectors, delimiter=",")
    np.savetxt(tmp_path / "glove.txt", vectors)
    for name in ("glove.npy", "glove.csv", "glove.txt"):
        assert np.allclose(load_node_features(tmp_path / name, 4), vectors)
    with pytest.raises(ValueError, match=r"must be 5 rows \(one per class\)"):
        load_node_features(tmp_path / "glove.npy", 5)
    (tmp_path / "glove.pkl").write_bytes(b"not read")
    with pytest.raises(ValueError, match="not pickle"):
        load_node_features(tmp_path / "glove.pkl", 4)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 4), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot read node features"):
        load_node_features(tmp_path / "objects.npy", 4)
    with pytest.raises(FileNotFoundError):
        load_node_features(tmp_path / "missing.npy", 4)
    from_file = MLGCNModel(
        4, mlgcn_correlation(LABELS), "resnet18", False, node_features=tmp_path / "glove.csv"
    )
    assert from_file.gc1.weight.shape == (3, 1024)
    etf = MLGCNModel(4, mlgcn_correlation(LABELS), "resnet18", False, node_features="etf")
    gram = etf.node_features @ etf.node_features.T
    assert torch.allclose(torch.diag(gram), torch.ones(4), atol=1e-5)
    assert torch.allclose(gram[0, 1], torch.tensor(-1 / 3), atol=1e-5)
