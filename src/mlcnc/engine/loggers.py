"""Experiment trackers beside TensorBoard (``train.loggers``), through Lightning's loggers.

``train.loggers`` lists ``tensorboard`` (the default, ``RUN/tensorboard/``), ``wandb``
(Weights & Biases: ``lightning.pytorch.loggers.WandbLogger``, files under ``RUN/``; the
``WANDB_*`` variables choose the project and offline mode) and ``mlflow``
(``MLFlowLogger``: the tracking URI in ``MLFLOW_TRACKING_URI``, else ``RUN/mlruns``). A
tracker's package is imported only when it is listed; one that is not installed is one
line naming the package, before anything is trained. Each gets the resolved config as its
hyper-parameters and the same scalars as TensorBoard (every ``train.log_every`` steps and
every epoch).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mlcnc.schema import ConfigError

PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


def _wandb(run_dir: Path, name: str) -> Any:
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(
        name=name, save_dir=str(run_dir), project=os.environ.get("WANDB_PROJECT", "mlcnc")
    )


def _mlflow(run_dir: Path, name: str) -> Any:
    from lightning.pytorch.loggers import MLFlowLogger

    uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").absolute().as_uri()
    return MLFlowLogger(experiment_name="mlcnc", run_name=name, tracking_uri=uri)


FACTORIES: dict[str, Callable[[Path, str], Any]] = {"wandb": _wandb, "mlflow": _mlflow}


def check_loggers(names: Sequence[str]) -> None:
    """A listed tracker whose package is missing: one line naming it (ConfigError)."""
    for name in names:
        package = PACKAGES.get(name)
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"train.loggers lists {name}, but the package {package!r} is not installed: "
                f"pip install {package}, or leave {name} out of train.loggers"
            )


def make_loggers(names: Sequence[str], run_dir: Path, config: dict[str, Any]) -> list[Any]:
    """The trackers of ``names`` other than TensorBoard, each given the config."""
    loggers = []
    for name in names:
        if name in FACTORIES:
            logger = FACTORIES[name](Path(run_dir), Path(run_dir).name)
            logger.log_hyperparams(config)
            loggers.append(logger)
    return loggers
