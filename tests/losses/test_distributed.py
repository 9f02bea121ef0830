"""Every criterion and loss is exact under DDP: two gloo processes on CPU against one process.

The DDP contract (``mlcnc.losses.distributed``): with the global batch split over W
processes, the mean over processes of each returned value (total and every term) is the
single-process value on the global batch, and so is the gradient DDP applies (the mean of
the processes' parameter gradients), for equal (4 + 4) and unequal (5 + 3) shards.

Every method the library registers is built on timm's tiny ``test_resnet`` (random init,
BatchNorm in eval mode and no dropout, so every shard sees one function; the two-branch
BBN and URS on ``test_efficientnet``, which they can split, with paired batches of two
images and two label rows per sample, as their samplers give them) and its criterion
is run in both epoch phases (MLC-NC's warm-up and after it, prototypes set by one
``end_epoch``), MLC-NC in both recipes and both L_FPC reductions. The two processes wrap
model + criterion in ``DistributedDataParallel`` as the engine does; the reference runs in
this process without a process group. The pure loss functions are checked on their inputs:
each process's gradient of its shard is W times the global gradient of those rows.
"""

from __future__ import annotations

import copy
import dataclasses
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from mlcnc.losses.asymmetric import asymmetric_loss
from mlcnc.losses.bce import bce_loss
from mlcnc.losses.distributed import gather_batch, global_mean, local_batch, world_size
from mlcnc.losses.distribution_balanced import DB_PRESETS, distribution_balanced_loss
from mlcnc.losses.focal import focal_loss
from mlcnc.losses.functional import (
    collapse_calibration_loss,
    feature_label_alignment_loss,
    two_way_loss,
)
from mlcnc.losses.ldam import ldam_loss, ldam_margins
from mlcnc.methods import METHODS, MethodConfig, build_method, method_defaults

ASL = {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05, "eps": 1e-8, "detach_focal_weight": True}

WORLD = 2
SPLITS = {"equal": (4, 4), "unequal": (5, 3)}
NUM_CLASSES = 5
CLASS_FREQ = np.array([40, 20, 9, 4, 2])
NUM_SAMPLES = 50
TINY = "test_resnet"
TINY_SPLITTABLE = "test_efficientnet"
TINY_CLIP = "open_clip:mlcnc-tiny-vit"  # random-weight tiny CLIP (mlcnc.models.clip)
CLIP_METHOD_MODULES = ("lmclip", "mlcnc_clip", "lmpt")
PAIRED_EPOCHS = 20  # BBN's alpha at epoch 10 is then 1 - (10 / 20)^2 = 0.75
RTOL = 1e-5

# Global batch: a row without positive (3); class 2 positive once, class 4 in late rows
# only; class 0 without negative in the last 4 rows (one shard has no negative of it).
TARGETS = torch.tensor(
    [
        [1, 0, 0, 0, 0],
        [0, 1, 0, 1, 0],
        [1, 1, 0, 1, 0],
        [0, 0, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 1, 0, 0, 1],
        [1, 0, 0, 1, 1],
        [1, 1, 0, 0, 0],
    ],
    dtype=torch.float32,
)
SAMPLE_INDICES = torch.tensor([3, 17, 0, 42, 8, 25, 11, 49])  # the batch's rows of the training set
# The batch end_epoch builds the prototypes from: class 3 never positive (no prototype).
PROTOTYPE_TARGETS = torch.tensor(
    [[1, 0, 0, 0, 1], [0, 1, 1, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 1]], dtype=torch.float32
)


@dataclasses.dataclass(frozen=True)
class Case:
    method: str
    recipe: str = "paper"
    loss: tuple[tuple[str, Any], ...] = ()
    epoch: int = 0

    def __str__(self) -> str:
        options = ",".join(f"{k}={v}" for k, v in self.loss)
        return f"{self.method}[{self.recipe},epoch={self.epoch}{',' + options if options else ''}]"


def library_methods() -> list[str]:
    """Every method the library registers (tests may register their own)."""
    return sorted(
        n for n in METHODS.names() if METHODS.get(n).build.__module__.startswith("mlcnc.")
    )


def is_paired(method: str) -> bool:
    """A two-image method (BBN, URS): trains on (B, 2, 3, H, W) images, (B, 2, C) targets."""
    return METHODS.get(method).sampler.startswith("paired")


def batch_of(paired: bool, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The batch as the method's sampler gives it: paired methods get each sample with a
    second one (here the batch reversed), images (B, 2, 3, H, W) and targets (B, 2, C)."""
    if not paired:
        return images, targets
    return torch.stack([images, images.flip(0)], 1), torch.stack([targets, targets.flip(0)], 1)


def criterion_cases() -> list[Case]:
    """Every library method after any warm-up; the MLC-NC family (methods with an
    ``fpc_reduction`` option) also in its warm-up, in both recipes and both reductions;
    LDAM-DRW also after its deferred re-weighting started."""
    cases = []
    for name in library_methods():
        loss_options = (method_defaults(name) or {"loss": {}})["loss"]
        if loss_options.get("drw"):  # LDAM-DRW also with its re-weighting started
            cases.append(Case(name, loss=(("drw_start", 0.4),), epoch=10))
        if "fpc_reduction" not in loss_options:
            cases.append(Case(name, epoch=10))
            continue
        for recipe in ("paper", "official"):
            cases += [Case(name, recipe, epoch=0), Case(name, recipe, epoch=10)]
        cases.append(Case(name, loss=(("fpc_reduction", "per_sample"),), epoch=10))
    return cases


def needs_clip(method: str) -> bool:
    """A vision-language method: built on the tiny random-weight CLIP."""
    return METHODS.get(method).build.__module__.rsplit(".", 1)[-1] in CLIP_METHOD_MODULES


def caption_file() -> str:
    """One caption per training image (``img/<i>.jpg <words>``), for LMPT's CSEL."""
    import tempfile

    words = ("cat", "dog", "a red car", "two people", "a tree")
    path = Path(tempfile.mkdtemp(prefix="mlcnc-ddp-")) / "captions.txt"
    lines = (
        f"img/{i}.jpg a photo of {words[i % 5]} and {words[(i * 3) % 5]}"
        for i in range(NUM_SAMPLES)
    )
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def build(case: Case):
    model = {"embed_dim": 16, "num_heads": 2} if case.method.startswith("mlcnc") else {}
    options = METHODS.get(case.method).model_options
    captioned = options is not None and any(
        f.name == "captions" for f in dataclasses.fields(options)
    )
    if captioned:  # LMPT: the CSEL term reads each image's caption by its sample index
        model["captions"] = caption_file()
    backbone = TINY_SPLITTABLE if is_paired(case.method) else TINY
    cfg = MethodConfig(
        name=case.method,
        backbone=TINY_CLIP if needs_clip(case.method) else backbone,
        pretrained=False,
        recipe=case.recipe,
        model=model,
        loss=dict(case.loss),
    )
    labels = (np.arange(NUM_SAMPLES)[:, None] % (np.arange(NUM_CLASSES) + 2) == 0).astype(np.uint8)
    return build_method(
        cfg,
        NUM_CLASSES,
        CLASS_FREQ,
        num_samples=NUM_SAMPLES,
        train_labels=labels,
        epochs=PAIRED_EPOCHS,
        train_paths=[f"/data/img/{i}.jpg" for i in range(NUM_SAMPLES)] if captioned else None,
    )


def forward(model: nn.Module, inputs: Tensor, indices: Tensor) -> Any:
    """The model's output; a model reading per-image side data gets the sample indices."""
    if getattr(model, "uses_sample_indices", False):
        return model(inputs, sample_indices=indices)
    return model(inputs)


def prepared(case: Case, images: Tensor) -> tuple[nn.Module, nn.Module, bool]:
    """The case's model and criterion with prototypes from one earlier epoch, and whether
    it trains on paired batches."""
    torch.manual_seed(0)
    method = build(case)
    model, criterion = method.model.eval(), method.criterion.train()
    paired = is_paired(case.method)
    inputs, targets = batch_of(paired, images[:4], PROTOTYPE_TARGETS)
    with torch.no_grad():
        criterion(model(inputs), targets)
    criterion.end_epoch()
    criterion.set_epoch(case.epoch)
    if hasattr(model, "set_epoch"):
        model.set_epoch(case.epoch)
    return model, criterion, paired


class WithLoss(nn.Module):
    """model + criterion as one module, the criterion hidden from the module tree (as the
    engine wraps them for DDP)."""

    def __init__(self, model: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.criterion = (criterion,)

    def forward(self, images: Tensor, targets: Tensor, indices: Tensor) -> dict[str, Tensor]:
        return self.criterion[0](forward(self.model, images, indices), targets)


def trainable(model: nn.Module) -> dict[str, Tensor]:
    return {
        n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


# --------------------------------------------------------------------------- pure functions
def _functional_inputs() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    b, c = TARGETS.shape
    return {
        "logits": 2 * torch.randn(b, c, generator=g),
        "features": torch.randn(b, c, 6, generator=g),
        "label_embeddings": torch.randn(c, 6, generator=g),
        "projections": torch.randn(b, c, 3, generator=g),
        "prototypes": torch.randn(c, 3, generator=g),
    }


FREQ = torch.as_tensor(CLASS_FREQ, dtype=torch.float32)
VALID = torch.tensor([True, True, False, True, True])
# name -> (the sharded input, loss of (that input's shard, inputs, the targets' shard)).
FUNCTIONAL = {
    "two_way": ("logits", lambda x, i, y: two_way_loss(x, y, tp=3.0, tn=0.5)),
    "fla": ("features", lambda x, i, y: feature_label_alignment_loss(x, i["label_embeddings"], y)),
    "fpc_positive_mean": (
        "projections",
        lambda x, i, y: collapse_calibration_loss(x, i["prototypes"], y, 0.5, 0.3, valid=VALID),
    ),
    "fpc_per_sample": (
        "projections",
        lambda x, i, y: collapse_calibration_loss(
            x, i["prototypes"], y, 0.5, reduction="per_sample", valid=VALID
        ),
    ),
    "bce_sum": ("logits", lambda x, i, y: bce_loss(x, y, reduction="sum")),
    "focal_sum": (
        "logits",
        lambda x, i, y: focal_loss(x, y, gamma=2.0, alpha=None, reduction="sum"),
    ),
    "ldam_sum": (
        "logits",
        lambda x, i, y: ldam_loss(x, y, ldam_margins(FREQ, 0.5), scale=30.0, reduction="sum"),
    ),
    "asl_mean": ("logits", lambda x, i, y: asymmetric_loss(x, y, **ASL, reduction="mean")),
    "asl_sum": ("logits", lambda x, i, y: asymmetric_loss(x, y, **ASL, reduction="sum")),
    "db_focal_sum": (
        "logits",
        lambda x, i, y: distribution_balanced_loss(
            x,
            y,
            FREQ,
            NUM_SAMPLES,
            DB_PRESETS["voc"],
            focal=True,
            gamma=2.0,
            balance_param=2.0,
            reduction="sum",
        ),
    ),
}


def _functional(name: str, inputs: dict[str, Tensor], rows: slice) -> tuple[Tensor, Tensor]:
    """(value, gradient of the sharded input's rows) of one loss on ``rows`` of the batch."""
    key, loss = FUNCTIONAL[name]
    x = inputs[key][rows].clone().requires_grad_()
    value = loss(x, inputs, TARGETS[rows])
    value.backward()
    return value.detach(), x.grad


# --------------------------------------------------------------------------- the two processes
def _rows(sizes: tuple[int, ...], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


Prepared = dict[str, tuple[nn.Module, nn.Module, bool]]


def _sharded_criteria(rank: int, prepared_cases: Prepared, images: Tensor) -> dict[str, Any]:
    """Every case on this process's shard, model + criterion wrapped in DDP."""
    from torch.nn.parallel import DistributedDataParallel

    results: dict[str, Any] = {}
    for key, (model, criterion, paired) in prepared_cases.items():
        model, criterion = copy.deepcopy(model), copy.deepcopy(criterion)
        inputs, targets = batch_of(paired, images, TARGETS)
        state = copy.deepcopy(criterion.state_dict())
        ddp = DistributedDataParallel(WithLoss(model, criterion), find_unused_parameters=True)
        for split, sizes in SPLITS.items():
            criterion.load_state_dict(state)  # the prototype sums of the other split
            model.zero_grad(set_to_none=True)
            rows = _rows(sizes, rank)
            losses = ddp(inputs[rows], targets[rows], SAMPLE_INDICES[rows])
            losses["total"].backward()
            names = sorted(losses)
            values = torch.stack([losses[k].detach() for k in names])
            dist.all_reduce(values)
            results[f"{key}/{split}"] = {
                "values": dict(zip(names, (values / WORLD).tolist(), strict=True)),
                "grads": trainable(model),  # DDP's gradient: the mean over processes
            }
    return results


def _sharded_functions(rank: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    inputs = _functional_inputs()
    for name in FUNCTIONAL:
        for split, sizes in SPLITS.items():
            rows = _rows(sizes, rank)
            value, grad = _functional(name, inputs, rows)
            placed = torch.zeros_like(inputs[FUNCTIONAL[name][0]])
            placed[rows] = grad
            both = torch.cat([value.reshape(1), placed.flatten()])
            dist.all_reduce(both)
            results[f"{name}/{split}"] = {
                "value": both[0] / WORLD,
                "grad": both[1:].view_as(placed) / WORLD,  # each shard's is W x global
            }
    return results


def _sharded_helpers(rank: int) -> dict[str, Any]:
    """gather_batch of 5 + 3 rows (values and gradient); local_batch() turns syncing off."""
    sizes = SPLITS["unequal"]
    rows = _rows(sizes, rank)
    shard = torch.arange(8.0).view(8, 1).expand(8, 3)[rows].clone().requires_grad_()
    gathered = gather_batch(shard)
    (gathered * torch.arange(1.0, 9.0).view(8, 1)).sum().backward()
    logits = _functional_inputs()["logits"][rows]
    with local_batch():
        local = (
            world_size(),
            two_way_loss(logits, TARGETS[rows], tp=4.0, tn=1.0),
            bce_loss(logits, TARGETS[rows]),
        )
    return {
        f"helpers/{rank}": {
            "world_size": world_size(),
            "gathered": gathered.detach(),
            "grad": shard.grad,
            "local_world_size": local[0],
            "local_losses": torch.stack(local[1:]).detach(),
        }
    }


def _worker(rank: int, port: int, folder: str, prepared_cases: Prepared) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=120),
    )
    try:
        images = torch.load(Path(folder, "images.pt"), weights_only=True)
        results = _sharded_criteria(rank, prepared_cases, images) | _sharded_functions(rank)
        results |= _sharded_helpers(rank)
        if rank == 0:
            torch.save(results, Path(folder, "sharded.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(
    model: nn.Module, criterion: nn.Module, paired: bool, images: Tensor
) -> dict[str, Any]:
    """One process, the global batch."""
    model, criterion = copy.deepcopy(model), copy.deepcopy(criterion)
    inputs, targets = batch_of(paired, images, TARGETS)
    losses = criterion(forward(model, inputs, SAMPLE_INDICES), targets)
    losses["total"].backward()
    return {"values": {k: v.detach() for k, v in losses.items()}, "grads": trainable(model)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{"reference": one process, "sharded": the two processes' means}, keyed by case."""
    folder = tmp_path_factory.mktemp("ddp_losses")
    images = torch.randn(TARGETS.shape[0], 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(images, folder / "images.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only wait for each other
    try:
        prepared_cases = {str(case): prepared(case, images) for case in criterion_cases()}
        # fork (where there is one) hands the prepared models over without a re-import.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        context = mp.start_processes(
            _worker,
            args=(_free_port(), str(folder), prepared_cases),
            nprocs=WORLD,
            join=False,
            start_method=method,
        )
        reference = {key: _reference(*pair, images) for key, pair in prepared_cases.items()}
        inputs = _functional_inputs()
        for name in FUNCTIONAL:
            reference[name] = _functional(name, inputs, slice(None))
        deadline = time.monotonic() + 300
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail("the two DDP processes did not finish in 300 s")
        sharded = torch.load(folder / "sharded.pt", weights_only=True)
        return {"errors": _errors(reference, sharded), "sharded": sharded}
    finally:
        torch.set_num_threads(threads)


def _errors(reference: dict[str, Any], sharded: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{"<case>/<split>": {"value <term>" or "grad <parameter>": relative error}}."""
    errors: dict[str, dict[str, float]] = {}
    for key, want in reference.items():
        for split in SPLITS:
            got = sharded[f"{key}/{split}"]
            if isinstance(want, tuple):  # a loss function: (value, gradient of its input)
                errors[f"{key}/{split}"] = {
                    "value": _relative_error(got["value"], want[0]),
                    "grad": _relative_error(got["grad"], want[1]),
                }
                continue
            assert set(got["values"]) == set(want["values"]), key
            assert set(got["grads"]) == set(want["grads"]), key
            errors[f"{key}/{split}"] = {
                f"value {term}": _relative_error(torch.tensor(got["values"][term]), value)
                for term, value in want["values"].items()
            } | {
                f"grad {name}": _relative_error(got["grads"][name], grad)
                for name, grad in want["grads"].items()
            }
    return errors


def _relative_error(got: Tensor, want: Tensor) -> float:
    """max |got - want| over the largest |want| (over the largest |got| if want is 0)."""
    scale = want.abs().max().clamp(min=1e-12)
    if want.abs().max() == 0:
        return float(got.abs().max()) / 1e-12 if got.abs().max() > 1e-12 else 0.0
    return float((got - want).abs().max() / scale)


def _assert_exact(errors: dict[str, dict[str, float]], key: str) -> None:
    for split in SPLITS:
        got = errors[f"{key}/{split}"]
        worst = max(got, key=got.get)
        assert got[worst] <= RTOL, f"{split} shards: {worst} off by {got[worst]:.2e} (relative)"


@pytest.mark.parametrize("case", criterion_cases(), ids=str)
def test_criterion_gives_the_global_batch_value_and_gradient(
    case: Case, runs: dict[str, Any]
) -> None:
    _assert_exact(runs["errors"], str(case))


@pytest.mark.parametrize("name", sorted(FUNCTIONAL))
def test_loss_function_gives_the_global_batch_value_and_gradient(
    name: str, runs: dict[str, Any]
) -> None:
    _assert_exact(runs["errors"], name)


def test_every_library_method_is_covered() -> None:
    covered = {case.method for case in criterion_cases()}
    assert covered == set(library_methods()) and len(covered) >= 18
    assert {"bbn", "urs"} <= covered


def test_gather_batch_concatenates_unequal_shards_and_sums_their_gradients(
    runs: dict[str, Any],
) -> None:
    got = runs["sharded"]["helpers/0"]
    assert got["world_size"] == WORLD
    torch.testing.assert_close(got["gathered"], torch.arange(8.0).view(8, 1).expand(8, 3))
    # Both processes back-propagate the same sum: rank 0's 5 rows get twice their weight.
    torch.testing.assert_close(got["grad"], 2 * torch.arange(1.0, 6.0).view(5, 1).expand(5, 3))


def test_local_batch_reduces_over_the_shard_alone(runs: dict[str, Any]) -> None:
    got = runs["sharded"]["helpers/0"]
    assert got["local_world_size"] == 1
    logits, targets = _functional_inputs()["logits"][:5], TARGETS[:5]
    want = torch.stack([two_way_loss(logits, targets, tp=4.0, tn=1.0), bce_loss(logits, targets)])
    torch.testing.assert_close(got["local_losses"], want, rtol=1e-6, atol=0)


def test_without_a_process_group_the_helpers_are_the_local_reductions() -> None:
    assert not dist.is_initialized() and world_size() == 1
    x = torch.randn(5, 3)
    assert gather_batch(x) is x
    assert global_mean(x.sum(), x.numel()) == x.sum() / 15
    mask = x > 0
    assert global_mean(x[mask].sum(), mask.sum()) == x[mask].sum() / mask.sum()
    assert global_mean(torch.zeros(()), torch.tensor(0)) == 0
