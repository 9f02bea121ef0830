"""``mlcnc train``: train a method from a config (default: MLC-NC on the synthetic benchmark)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = "synthetic"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model (default: MLC-NC on the embedded synthetic benchmark)",
        description=(
            "Train a method from a config. With no arguments: MLC-NC (paper recipe) on the "
            "embedded synthetic benchmark with an offline pretrained backbone, a few minutes "
            "on a CPU. Ends by printing the Total / Head / Medium / Tail test mAP table."
        ),
    )
    parser.add_argument(
        "--config",
        metavar="NAME_OR_FILE",
        help=f"a shipped config name (default {DEFAULT_CONFIG!r}; see --list-configs) or a YAML file",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. optim.epochs=5 method.backbone=resnet50 data.image_size=224",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR_OR_CKPT",
        help="continue a run from its last checkpoint (same config unless --force)",
    )
    parser.add_argument(
        "--force", action="store_true", help="resume even though the config differs"
    )
    parser.add_argument("--seed", type=int, help="random seed (train.seed)")
    parser.add_argument(
        "--output", metavar="DIR", help="run folder (default runs/<config>-<timestamp>)"
    )
    parser.add_argument(
        "--list-configs", action="store_true", help="list the shipped configs and exit"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # e.g. first-use data generation
    from mlcnc.config import (
        ConfigError,
        config_from_dict,
        load_config,
        merge_dicts,
        parse_override,
        shipped_configs,
    )
    from mlcnc.engine import NonFiniteLossError, train
    from mlcnc.engine.checkpoint import LAST, load_checkpoint, resolve_checkpoint

    if args.list_configs:
        print("\n".join(shipped_configs()))
        return 0
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.output is not None:
        overrides.append(f"train.output={args.output}")
    try:
        if args.resume and args.config is None:
            # Resume with the run's own config (plus any overrides, which are then checked).
            data = load_checkpoint(resolve_checkpoint(args.resume, LAST))["config"]
            for text in overrides:
                data = merge_dicts(data, parse_override(text))
            cfg = config_from_dict(data)
            name = Path(args.resume).name
        else:
            cfg = load_config(args.config or DEFAULT_CONFIG, overrides)
            name = Path(args.config or DEFAULT_CONFIG).stem
        result = train(cfg, config_name=name, resume=args.resume, force=args.force)
    except (ConfigError, FileNotFoundError, NonFiniteLossError) as error:
        print(f"mlcnc train: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, (ConfigError, FileNotFoundError)) else 1
    if result.global_rank == 0:
        print()
        print(result.table())
        print(f"\nrun folder: {result.run_dir}")
        if result.best is None:
            print("(no val split: the last epoch is reported)")
    return 0
