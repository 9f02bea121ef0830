"""OLTR's network against loops written from its code (``layers/ModulatedAttLayer.py``,
``models/MetaEmbeddingClassifier.py``, ``models/CosNormClassifier.py``), its two stages and
its state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlcnc.models.oltr import ModulatedAttention, OLTRModel


def reference_modulated_attention(layer: ModulatedAttention, x: torch.Tensor) -> torch.Tensor:
    """The code's ``embedded_gaussian`` on a 7 x 7 map, image by image."""
    out = []
    c = x.shape[1]
    for image in x:
        xi = image[None]
        g = layer.g(xi).view(1, layer.inner, -1).permute(0, 2, 1)
        theta = layer.theta(xi).view(1, layer.inner, -1).permute(0, 2, 1)
        phi = layer.phi(xi).view(1, layer.inner, -1)
        attn = F.softmax(theta @ phi, dim=-1)
        y = (attn @ g).permute(0, 2, 1).contiguous().view(1, layer.inner, 7, 7)
        mask = layer.conv_mask(y)
        spatial = layer.fc_spatial(xi.view(-1, 7 * 7 * c)).softmax(dim=1)
        spatial = spatial.view(-1, 7, 7).unsqueeze(1).expand(-1, c, -1, -1)
        out.append(spatial * mask + xi)
    return torch.cat(out)


def test_modulated_attention_is_the_codes_and_starts_as_the_identity() -> None:
    torch.manual_seed(0)
    layer = ModulatedAttention(6)
    x = torch.randn(2, 6, 7, 7)
    torch.testing.assert_close(layer(x), x)  # conv_mask starts at zero
    torch.nn.init.normal_(layer.conv_mask.weight)
    torch.testing.assert_close(layer(x), reference_modulated_attention(layer, x))
    assert layer(torch.randn(2, 6, 3, 5)).shape == (2, 6, 3, 5)  # other map sizes


def test_meta_embedding_is_the_codes() -> None:
    torch.manual_seed(1)
    model = OLTRModel(4, backbone="test_resnet", pretrained=False, feature_dim=8).eval()
    model.start_meta_embedding(torch.randn(4, 8), torch.ones(4, dtype=torch.bool))
    images = torch.randn(3, 3, 32, 32)
    out = model(images)
    direct = F.relu(model.fc_add(model.attention(model.backbone(images)).mean(dim=(2, 3))))
    torch.testing.assert_close(out.features, direct)
    for i in range(3):  # MetaEmbedding_Classifier.forward and CosNorm_Classifier, per image
        x, cents = direct[i], model.centroids.detach()
        reach = 10.0 / torch.stack([torch.norm(x - cents[j], 2) for j in range(4)]).min()
        memory = model.hallucinator(x).softmax(dim=0) @ cents
        v = reach * (x + model.selector(x).tanh() * memory)
        norm = torch.norm(v, 2)
        ex = (norm / (1 + norm)) * (v / norm)
        w = model.cosine_weight / torch.norm(model.cosine_weight, 2, 1, keepdim=True)
        torch.testing.assert_close(out.logits[i], 16 * ex @ w.t())
    assert out.centroids is model.centroids


def test_stage_1_then_meta_embedding_and_state_round_trip() -> None:
    torch.manual_seed(2)
    model = OLTRModel(4, backbone="test_resnet", pretrained=False, feature_dim=8).eval()
    images = torch.randn(2, 3, 32, 32)
    stage1 = model(images)
    pooled = model.backbone(images).mean(dim=(2, 3))
    torch.testing.assert_close(stage1.logits, model.fc(pooled))
    assert stage1.centroids is None and not stage1.features.requires_grad
    start = model.centroids.detach().clone()
    valid = torch.tensor([True, False, True, True])
    model.start_meta_embedding(torch.zeros(4, 8), valid)
    torch.testing.assert_close(model.centroids[1], start[1])  # unseen class keeps its start
    assert model.centroids[valid].abs().sum() == 0 and model.in_stage2
    again = OLTRModel(4, backbone="test_resnet", pretrained=False, feature_dim=8).eval()
    assert not again.in_stage2
    again.load_state_dict(model.state_dict())
    assert again.in_stage2
    torch.testing.assert_close(again(images).logits, model(images).logits, rtol=0, atol=0)


def test_hallucinator_starts_from_the_stage_1_classifier_when_the_widths_match() -> None:
    model = OLTRModel(3, backbone="test_resnet", pretrained=False, feature_dim=1)
    width = model.num_features
    model = OLTRModel(3, backbone="test_resnet", pretrained=False, feature_dim=width)
    model.start_meta_embedding(torch.zeros(3, width), torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(model.hallucinator.weight, model.fc.weight)


@pytest.mark.parametrize("epochs, first", [(90, 30), (2, 1), (1, 1), (20, 7)])
def test_stage_2_epoch(epochs: int, first: int) -> None:
    from mlcnc.methods import MethodConfig, build_method
    from mlcnc.methods.oltr import stage2_epoch

    assert stage2_epoch(1 / 3, epochs) == first
    cfg = MethodConfig(name="oltr", backbone="test_resnet", pretrained=False)
    method = build_method(cfg, 3, np.array([5, 3, 1]), epochs=epochs)
    assert method.criterion.stage2_epoch == first and method.sampler == "class_aware"
