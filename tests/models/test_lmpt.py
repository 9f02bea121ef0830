"""LMPT's model on tiny random-weight open_clip towers (nothing downloaded): the prompt text
encoder is open_clip's ``encode_text``, only the contexts train, the frozen towers stay in
eval mode, CSEL distances, the cached text features at inference, bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlcnc.models.lmpt import LMPT, encode_prompts

NAMES = ["cat", "dog", "traffic_light"]
CAPTIONS = ["a cat on a sofa", "two dogs and a cat in the park at night", "a traffic light"]


def tiny(config="mlcnc-tiny-vit", **options) -> LMPT:
    torch.manual_seed(0)
    return LMPT(config, False, 3, NAMES, captions=CAPTIONS, **options)


def test_prompt_encoder_is_open_clips_encode_text():
    model = tiny()
    tokens = model.prompt_learner.prompt_tokens
    embeddings = model.clip.token_embedding(tokens)
    torch.testing.assert_close(
        encode_prompts(model.clip, embeddings, tokens), model.clip.encode_text(tokens)
    )


def test_prompts_hold_sos_contexts_then_the_class_name():
    model = tiny(n_ctx=4)
    learner = model.prompt_learner
    assert learner.ctx.shape == (3, 4, 16)
    assert 0.01 < learner.ctx.std().item() < 0.04  # N(0, 0.02)
    prompts = learner()
    fixed = model.clip.token_embedding(learner.prompt_tokens)
    assert prompts.shape == (3, 77, 16)
    torch.testing.assert_close(prompts[:, 0], fixed[:, 0])
    torch.testing.assert_close(prompts[:, 1:5], learner.ctx)
    torch.testing.assert_close(prompts[:, 5:], fixed[:, 5:])
    text = model.tokenizer(["X X X X traffic light."])[0]
    assert torch.equal(learner.prompt_tokens[2], text)


@pytest.mark.parametrize("class_specific", [True, False])
def test_words_initialised_context(class_specific):
    model = tiny(ctx_init="a photo of a", class_specific=class_specific)
    learner = model.prompt_learner
    assert learner.n_ctx == 4
    words = model.clip.token_embedding(model.tokenizer(["a photo of a"])[0, 1:5])
    want = words.expand(3, 4, 16) if class_specific else words
    torch.testing.assert_close(learner.ctx, want)
    prompts = learner()
    torch.testing.assert_close(prompts, model.clip.token_embedding(learner.prompt_tokens))


def test_only_the_contexts_train_and_the_towers_stay_frozen():
    model = tiny("mlcnc-tiny-rn").train()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    assert not model.clip.training and not model.clip.visual.training
    images = torch.randn(2, 3, 32, 32)
    out = model(images, sample_indices=torch.tensor([2, 0]))
    assert out.logits.shape == (2, 3) and out.csel_distances.shape == (2, 3, 75)
    (out.logits.sum() + out.csel_distances.sum()).backward()
    assert model.prompt_learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n != "prompt_learner.ctx")
    # The released BatchNorm drift: running statistics move in training mode.
    drift = tiny("mlcnc-tiny-rn", bn_train_mode=True).train()
    assert drift.clip.visual.training and not drift.clip.transformer.training
    before = drift.clip.visual.bn1.running_mean.clone()
    drift(images)
    assert not torch.equal(before, drift.clip.visual.bn1.running_mean)
    frozen_before = model.clip.visual.bn1.running_mean.clone()
    model(images)
    assert torch.equal(frozen_before, model.clip.visual.bn1.running_mean)
    assert not drift.eval().clip.visual.training


def test_logits_are_scaled_cosines_and_csel_distances_follow_the_spec():
    model = tiny().train()
    images = torch.randn(2, 3, 32, 32)
    out = model(images, sample_indices=torch.tensor([1, 2]))
    image = F.normalize(model.clip.encode_image(images), dim=-1)
    text = model.encode_text()[1]
    torch.testing.assert_close(out.logits, model.clip.logit_scale.exp() * image @ text.T)
    captions = model.tokenizer([c[:75] for c in CAPTIONS])[[1, 2]]
    words = model.clip.token_embedding(captions)
    prompts = model.prompt_learner()
    for b in range(2):
        for c in range(3):
            for t in (0, 13, 74):
                want = 1 - F.cosine_similarity(words[b, t], prompts[c, t + 2], dim=0)
                torch.testing.assert_close(out.csel_distances[b, c, t], want)
    assert model(images).csel_distances is None  # no sample indices


def test_inference_reuses_the_text_features_and_needs_no_captions(monkeypatch):
    model = tiny().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = model(images).logits
    state = model.state_dict()
    assert "caption_tokens" not in state and "text_features" in state

    def no_text(*args, **kwargs):
        raise AssertionError("the text tower ran at inference")

    monkeypatch.setattr(model, "encode_text", no_text)
    with torch.no_grad():
        torch.testing.assert_close(model(images).logits, first)
    monkeypatch.undo()
    # A step on ctx re-encodes; a model rebuilt without captions loads the state dict.
    with torch.no_grad():
        model.prompt_learner.ctx.add_(0.5)
        moved = model(images).logits
    assert not torch.allclose(moved, first)
    rebuilt = LMPT("mlcnc-tiny-vit", False, 3, NAMES)
    assert rebuilt.caption_tokens is None
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(images).logits, moved)


def test_bf16_autocast_is_finite():
    from mlcnc.losses.distribution_balanced import DB_PRESETS
    from mlcnc.losses.lmpt import LMPTCriterion

    model = tiny().train()
    criterion = LMPTCriterion(
        [5, 3, 1], 12, DB_PRESETS["voc"], lam=0.5, cls_loss="dbl_lmpt", gamma=2.0,
        balance_param=2.0, csel_margin=0.2, csel_gamma=2.0, csel_counts="raw",
        csel_score="distance",
    )  # fmt: skip
    targets = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32), sample_indices=torch.tensor([0, 1]))
    assert out.csel_distances.dtype == torch.float32
    terms = criterion(out, targets)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in terms.values())
    terms["total"].backward()
    assert torch.isfinite(model.prompt_learner.ctx.grad).all()
