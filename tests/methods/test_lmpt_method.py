"""LMPT as a registered method: listed, its published recipes, its option checks and the
one-line errors of a run that cannot start (no captions, no weights offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import tiny_data_overrides
from mlcnc.cli import main
from mlcnc.config import load_config, resolve_config
from mlcnc.engine.optim import PlateauLR, build_scheduler
from mlcnc.methods import METHODS, MethodConfig, build_method
from mlcnc.schema import ConfigError

TINY_CLIP = "open_clip:mlcnc-tiny-vit"


def test_registered_and_listed(capsys):
    assert METHODS.get("lmpt").sampler == "random"
    assert METHODS.get("lmpt").display_name == "LMPT"
    assert main(["benchmark", "--list-methods"]) in (0, None)
    assert "lmpt" in capsys.readouterr().out.split()


@pytest.mark.parametrize(
    ("config", "clip", "neg_scale", "mu"),
    [
        ("voc_lt_lmpt", "ViT-B-16-quickgelu", 5.0, 0.3),
        ("voc_lt_lmpt_rn50", "RN50-quickgelu", 5.0, 0.3),
        ("coco_lt_lmpt", "ViT-B-16-quickgelu", 2.0, 0.2),
        ("coco_lt_lmpt_rn50", "RN50-quickgelu", 2.0, 0.2),
    ],
)
def test_published_recipes(config, clip, neg_scale, mu):
    cfg = resolve_config(load_config(config))
    o, m = cfg.optim, cfg.method
    assert m.name == "lmpt" and m.backbone == f"open_clip:{clip}" and m.pretrained is True
    assert (o.optimizer, o.lr, o.momentum, o.weight_decay) == ("sgd", 5e-4, 0.9, 1e-4)
    assert (o.schedule, o.gamma, o.plateau_patience, o.plateau_min_lr) == ("plateau", 0.1, 5, 1e-7)
    assert (o.batch_size, o.epochs) == (64, 50)
    assert (cfg.data.image_size, cfg.data.train_transform) == (224, "resize_square_flip")
    assert cfg.data.eval_transform == "resize_square" and cfg.data.normalize is True
    assert (m.model["n_ctx"], m.model["class_specific"], m.model["m_ctx"]) == (16, True, 2)
    loss = m.loss
    assert (loss["lam"], loss["cls_loss"], loss["csel_counts"]) == (0.5, "dbl_lmpt", "raw")
    assert (loss["neg_scale"], loss["map_mu"], loss["init_bias"]) == (neg_scale, mu, 0.05)
    assert (loss["csel_margin"], loss["csel_gamma"]) == (0.2, 2.0)


def test_config_show_prints_the_recipe(capsys):
    assert main(["config", "show", "--config", "voc_lt_lmpt"]) in (0, None)
    out = capsys.readouterr().out
    assert "name: lmpt" in out and "schedule: plateau" in out and "cls_loss: dbl_lmpt" in out


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"method\.loss\.csel_counts='softmax'.*#5 and #7"):
        resolve_config(load_config("voc_lt_lmpt", ["method.loss.csel_counts=softmax"]))
    with pytest.raises(ConfigError, match="cls_loss"):
        resolve_config(load_config("voc_lt_lmpt", ["method.loss.cls_loss=bce"]))
    with pytest.raises(ConfigError, match="class_token_position"):
        resolve_config(load_config("voc_lt_lmpt", ["method.model.class_token_position=front"]))
    with pytest.raises(ConfigError, match="needs a CLIP backbone"):
        build_method(MethodConfig(name="lmpt", backbone="resnet18"), 3, np.ones(3), 10)


def test_a_training_build_needs_captions_unless_lam_is_one(tmp_path):
    paths = ["a/1.jpg", "a/2.jpg"]
    cfg = MethodConfig(name="lmpt", backbone=TINY_CLIP, pretrained=False)
    with pytest.raises(ConfigError, match=r"lam=0\.5 < 1\) needs one caption per training") as e:
        build_method(cfg, 2, np.array([1, 1]), 2, train_paths=paths)
    assert "\n" not in str(e.value) and "method.model.captions=" in str(e.value)
    alone = MethodConfig(name="lmpt", backbone=TINY_CLIP, pretrained=False, loss={"lam": 1.0})
    assert (
        build_method(alone, 2, np.array([1, 1]), 2, train_paths=paths).model.caption_tokens is None
    )
    (tmp_path / "c.txt").write_text("a/1.jpg a cat\na/2.jpg a dog\n")
    given = MethodConfig(
        name="lmpt",
        backbone=TINY_CLIP,
        pretrained=False,
        model={"captions": str(tmp_path / "c.txt")},
    )
    model = build_method(given, 2, np.array([1, 1]), 2, train_paths=paths).model
    assert model.caption_tokens.shape == (2, 77)
    # A rebuilt (trained) model does not read the captions.
    assert build_method(given, 2, np.array([1, 1]), 2).model.caption_tokens is None


def test_offline_without_weights_is_one_line_naming_the_file(tiny_csv_dataset, tmp_path, capsys):
    weights = tmp_path / "ViT-B-16.safetensors"
    captions = tmp_path / "captions.txt"
    rows = (tiny_csv_dataset / "train.csv").read_text().splitlines()[1:]
    captions.write_text("".join(f"{r.split(',')[0]} a photo of {r.split(',')[1]}\n" for r in rows))
    argv = ["train", "--config", "voc_lt_lmpt", "data.name=csv",
            *tiny_data_overrides(tiny_csv_dataset), f"method.pretrained={weights}",
            "train.accelerator=cpu", "train.progress=false", f"train.output={tmp_path / 'run'}"]  # fmt: skip
    for extra, want in (
        ([], "needs one caption per training image"),
        ([f"method.model.captions={captions}"], str(weights)),
    ):
        code = main([*argv, *extra])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code != 0 and len(err) == 1, err
        assert want in err[0]
    assert "timm/vit_base_patch16_clip_224.openai" in err[0]


def test_plateau_steps_only_on_the_metric():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=5e-4)
    cfg = load_config("voc_lt_lmpt").optim
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=3)
    assert isinstance(scheduler, PlateauLR)
    for _ in range(100):
        scheduler.step()  # the loop's per-step calls: no effect
    assert scheduler.get_last_lr() == [5e-4]
    values = [50.0, 51.0] + [51.0] * 6
    lrs = []
    for v in values:
        assert scheduler.step_on_metric(v, "val/map_total") is None
        lrs.append(optimizer.param_groups[0]["lr"])
    # best at the 2nd evaluation; the 7th without gain (patience 5 exceeded) cuts lr x0.1.
    assert lrs[:7] == [5e-4] * 7 and lrs[7] == pytest.approx(5e-5)
    note = scheduler.step_on_metric(None, "val/map_total")
    assert "no val split" in note and scheduler.step_on_metric(None, "val/map_total") is None
    state = scheduler.state_dict()
    again = build_scheduler(optimizer, cfg, steps_per_epoch=3)
    again.load_state_dict(state)
    assert again.best == 51.0 and again.num_bad_epochs == scheduler.num_bad_epochs
