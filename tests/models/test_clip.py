"""CLIP towers through open_clip (mlcnc.models.clip): random-weight tiny configs only,
nothing downloaded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlcnc.models import clip as clip_module
from mlcnc.models.backbone import check_backbone_name, create_backbone
from mlcnc.models.clip import (
    ClipWeightsError,
    class_text_embeddings,
    create_clip,
    isometry,
    procrustes_etf,
)


@pytest.mark.parametrize("config", ["mlcnc-tiny-rn", "mlcnc-tiny-vit"])
def test_backbone_outputs(config):
    images = torch.randn(2, 3, 32, 32)
    clip = create_clip(config, False)
    pooled = create_backbone(f"open_clip:{config}:pooled")
    pooled.visual.load_state_dict(clip.visual.state_dict())
    out = pooled(images)
    assert out.shape == (2, 16, 1, 1) and pooled.num_features == 16
    torch.testing.assert_close(out[:, :, 0, 0], clip.encode_image(images))
    for output in ("map", "dense"):
        net = create_backbone(f"open_clip:{config}:{output}")
        features = net(images)
        assert features.dim() == 4 and features.shape[1] == net.num_features
    assert create_backbone(f"open_clip:{config}:dense").num_features == 16


def test_vit_dense_tokens_are_projected_patch_tokens():
    net = create_backbone("open_clip:mlcnc-tiny-vit:dense")
    images = torch.randn(1, 3, 32, 32)
    visual = net.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], 1) + visual.positional_embedding
    x = visual.transformer(visual.ln_pre(x))
    want = visual.ln_post(x[:, 1:]) @ visual.proj  # (1, 16 patches, d)
    got = net(images).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_names_are_checked():
    assert check_backbone_name("open_clip:RN50-quickgelu") is None
    assert check_backbone_name("open_clip:ViT-B-16-quickgelu:dense") is None
    assert "nearest" in check_backbone_name("open_clip:RN5O")
    assert "unknown CLIP output" in check_backbone_name("open_clip:RN50:patches")


def test_missing_weights_file_is_one_line(tmp_path):
    path = tmp_path / "ViT-B-16.safetensors"
    with pytest.raises(ClipWeightsError) as error:
        create_clip("ViT-B-16-quickgelu", str(path))
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "timm/vit_base_patch16_clip_224.openai" in message


def test_blocked_download_is_one_line(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", offline, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipWeightsError) as error:
        create_clip("RN50-quickgelu", True)
    message = str(error.value)
    assert "\n" not in message and "method.pretrained=" in message
    assert "timm/resnet50_clip.openai" in message


def test_local_file_loads_every_key(tmp_path):
    clip = create_clip("mlcnc-tiny-vit", False)
    path = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), path)
    loaded = create_clip("mlcnc-tiny-vit", str(path))
    for key, value in clip.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    torch.save({"visual.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ClipWeightsError, match="do not fit CLIP mlcnc-tiny-vit"):
        create_clip("mlcnc-tiny-vit", str(path))


def test_text_embeddings_built_once_and_unit(monkeypatch):
    clip = create_clip("mlcnc-tiny-vit", False)
    calls = []
    encode = clip.encode_text
    monkeypatch.setattr(clip, "encode_text", lambda t: calls.append(1) or encode(t))
    names, templates = ["cat", "traffic_light"], ("a photo of a {}.", "a {}")
    clip_module._TEXT_CACHE.clear()
    first = class_text_embeddings("mlcnc-tiny-vit", "x", names, templates, clip)
    again = class_text_embeddings("mlcnc-tiny-vit", "x", names, templates, clip)
    assert len(calls) == 1  # every prompt in one pass, then from the cache
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first.norm(dim=1), torch.ones(2))
    tokenizer = clip_module.text_tokenizer("mlcnc-tiny-vit")
    with torch.no_grad():  # reference: class by class (CLIP's zero-shot notebook)
        rows = []
        for name in names:
            emb = encode(tokenizer(clip_module.prompts_for(name, templates)))
            rows.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1))
    torch.testing.assert_close(first, torch.stack(rows), atol=1e-6, rtol=1e-5)
    assert clip_module.prompts_for("traffic_light", templates) == [
        "a photo of a traffic light.",
        "a traffic light",
    ]


def test_procrustes_etf_is_the_nearest_simplex_etf():
    from mlcnc.etf import simplex_etf

    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(5, 12, generator=g), dim=1)
    v = procrustes_etf(text)  # (d, C)
    gram = v.T @ v
    want = torch.full((5, 5), -1 / 4) + torch.eye(5) * (1 + 1 / 4)
    torch.testing.assert_close(gram, want, atol=1e-5, rtol=0)
    score = torch.trace(v.T @ text.T)
    for seed in range(20):  # no random simplex ETF is closer to the text embeddings
        other = simplex_etf(12, 5, torch.Generator().manual_seed(seed))
        assert torch.trace(other.T @ text.T) <= score + 1e-5
    lift = isometry(12, 20, seed=1)
    torch.testing.assert_close(lift.T @ lift, torch.eye(12), atol=1e-5, rtol=0)


def test_text_embeddings_cached_on_disk_for_pretrained_weights_only(tmp_path, monkeypatch):
    from mlcnc.models import text_cache

    monkeypatch.setenv("MLCNC_HOME", str(tmp_path / "home"))
    clip = create_clip("mlcnc-tiny-vit", False)
    weights = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), weights)
    calls = []
    encode = clip.encode_text
    monkeypatch.setattr(clip, "encode_text", lambda t: calls.append(1) or encode(t))
    names, templates = ["cat", "dog"], ["a photo of a {}."]

    def build(pretrained, class_names=names):
        clip_module._TEXT_CACHE.clear()  # a new process
        return class_text_embeddings("mlcnc-tiny-vit", pretrained, class_names, templates, clip)

    first = build(str(weights))
    files = list((tmp_path / "home" / "text_embeddings").iterdir())
    assert len(files) == 1 and files[0].name.startswith("mlcnc-tiny-vit-")
    assert files[0].suffix == ".safetensors" and not [p for p in files if ".tmp" in p.name]
    torch.testing.assert_close(build(str(weights)), first)
    assert len(calls) == 1  # the second "run" read the file
    build(str(weights), ["cat", "bird"])  # other names: another key, another file
    assert len(calls) == 2 and len(list(files[0].parent.iterdir())) == 2
    weights.write_bytes(weights.read_bytes() + b"\0")  # other weights (hash), another key
    assert text_cache.weights_id(str(weights)) != text_cache.weights_id(True) == "openai"
    build(False)  # a random tower: never cached
    assert len(calls) == 3 and len(list(files[0].parent.iterdir())) == 2
    files[0].write_bytes(b"not safetensors")  # a broken file is rebuilt and replaced
    weights.write_bytes(weights.read_bytes()[:-1])
    torch.testing.assert_close(build(str(weights)), first)
    assert len(calls) == 4
    torch.testing.assert_close(build(str(weights)), first)
    assert len(calls) == 4


def test_offline_weights_name_the_hub_file_without_retries(monkeypatch, caplog):
    import mlcnc.models.backbone as backbone_module

    monkeypatch.setattr(backbone_module, "hub_reachable", lambda: False)
    with caplog.at_level("DEBUG"), pytest.raises(ClipWeightsError) as error:
        create_clip("RN50-quickgelu", True)
    message = str(error.value)
    assert "\n" not in message and "open_model.safetensors" not in message
    assert "timm/resnet50_clip.openai/resolve/main/open_clip_model.safetensors" in message
    assert "method.pretrained=/path/to/open_clip_model.safetensors" in message
    assert not [r for r in caplog.records if "open_clip" in r.pathname or "huggingface" in r.name]


@pytest.mark.parametrize("content", [b"\xff\xd8\xff\xe0\x00\x10JFIF", b"garbage\n"])
def test_unreadable_weights_file_is_named_without_unpickling_advice(tmp_path, content, caplog):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(content)
    with caplog.at_level("DEBUG"), pytest.raises(ClipWeightsError) as error:
        create_clip("mlcnc-tiny-rn", str(path))
    message = str(error.value)
    assert message.startswith(f"method.pretrained={path}: not a .safetensors file")
    assert "weights_only" not in message and "\n" not in message
    assert not [r for r in caplog.records if "open_clip" in r.pathname]


def test_random_build_logs_nothing(caplog):
    with caplog.at_level("DEBUG"):
        create_clip("mlcnc-tiny-vit", False)
    assert not [r for r in caplog.records if "open_clip" in r.pathname]


@pytest.mark.parametrize(
    ("method", "backbone", "fixed"),
    [
        ("lmclip", "open_clip:mlcnc-tiny-rn", True),
        ("lmpt", "open_clip:mlcnc-tiny-rn", True),
        ("mlcnc_clip_a", "open_clip:mlcnc-tiny-rn", False),
        ("mlcnc_clip_a", "open_clip:mlcnc-tiny-rn:pooled", True),
        ("mlcnc_clip_b", "open_clip:mlcnc-tiny-rn:dense", False),
        ("mlcnc_clip_c", "open_clip:mlcnc-tiny-rn", False),
        ("mlcnc_clip_d", "open_clip:mlcnc-tiny-rn:pooled", True),
        ("lmclip", "open_clip:mlcnc-tiny-vit", True),
        ("mlcnc_clip_a", "open_clip:mlcnc-tiny-vit", True),
        ("mlcnc_clip_b", "open_clip:mlcnc-tiny-vit:dense", True),
        ("mlcnc_clip_c", "open_clip:mlcnc-tiny-vit", True),
        ("mlcnc_clip_d", "open_clip:mlcnc-tiny-vit:pooled", True),
    ],
)
def test_fixed_size_towers_refuse_another_image_size(method, backbone, fixed):
    from mlcnc.methods import check_method
    from mlcnc.methods.registry import MethodConfig
    from mlcnc.schema import ConfigError

    model = {"embed_dim": 16} if method == "mlcnc_clip_c" else {}
    cfg = MethodConfig(name=method, backbone=backbone, pretrained=True, model=model)
    check_method(cfg, 32)  # the tower's own size (random weights: nothing is downloaded)
    if not fixed:
        check_method(cfg, 48)
        return
    with pytest.raises(ConfigError) as error:
        check_method(cfg, 48)
    assert str(error.value).startswith("data.image_size=48: ")
    assert str(error.value).endswith("set data.image_size=32")
