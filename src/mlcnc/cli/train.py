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
        help="continue a run in its folder from its last checkpoint, or from RUN/checkpoints/"
        "NAME.ckpt (same config and data unless --force); with --output DIR, continue it "
        "in the new folder DIR; 'auto': continue the run in --output if it holds one, else "
        "start it there (what a requeued SLURM job does without --resume)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="resume even though the config or the training data differ (never another "
        "number of classes)",
    )
    parser.add_argument("--seed", type=int, help="random seed (train.seed)")
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="run folder (default runs/<config>-<timestamp>); one that holds a run is "
        "refused unless --resume or --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in --output even though it holds one: the old run's config, "
        "metrics, checkpoints, TensorBoard logs and plots are deleted first",
    )
    parser.add_argument(
        "--list-configs", action="store_true", help="list the shipped configs and exit"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config (every key and value; the method built on random weights "
        "reads one image of data.image_size) and exit without training or reading the data",
    )
    parser.set_defaults(func=run)


def resolve_train_config(args: argparse.Namespace):
    """The config ``mlcnc train`` would run: the file (or the resumed run's own config) with
    the overrides, ``--seed`` and ``--output``; and a name for the run folder."""
    from mlcnc.config import config_from_dict, load_config, merge_dicts, parse_override
    from mlcnc.launch.slurm import resolve_resume

    output = args.output or next(
        (o.partition("=")[2] for o in args.overrides if o.startswith("train.output=")), None
    )
    args.resume = resolve_resume(args.resume, output)  # --resume auto; a requeued SLURM job
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.output is not None:
        overrides.append(f"train.output={args.output}")
    if args.resume and args.config is None:
        # Resume with the run's own config (plus any overrides, which are then checked).
        from mlcnc.engine.resume import read_saved_run

        data = read_saved_run(args.resume).config
        for text in overrides:
            data = merge_dicts(data, parse_override(text))
        return config_from_dict(data), Path(args.resume).name
    name = args.config or DEFAULT_CONFIG
    return load_config(name, overrides), Path(name).stem


def run(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # e.g. first-use data generation
    from mlcnc.config import shipped_configs

    if args.list_configs:
        print("\n".join(shipped_configs()))
        return 0
    cfg, name = resolve_train_config(args)
    from mlcnc.cli._paths import check_output
    from mlcnc.config import config_to_dict

    data_paths = [v for v in config_to_dict(cfg)["data"].values() if isinstance(v, str) and v]
    check_output(
        cfg.train.output,
        option="--output (train.output)",
        inputs=[*data_paths, args.config],
        folder=True,
    )
    from mlcnc.data import check_required_keys

    check_required_keys(cfg.data)
    if args.dry_run:
        from mlcnc.engine.run_folder import check_run_folder
        from mlcnc.methods import check_method

        if cfg.train.output and not args.resume:  # the folder check the real run makes
            check_run_folder(cfg.train.output, "overwrite" if args.overwrite else "new")

        check_method(cfg.method, cfg.data.image_size, cfg.data.name, cfg.optim.epochs)
        print(
            f"config OK: method {cfg.method.name} ({cfg.method.recipe} recipe, "
            f"{cfg.method.backbone}) on {cfg.data.name}, {cfg.optim.epochs} epochs, "
            f"global batch {cfg.optim.batch_size}; `mlcnc config show` prints all of it"
        )
        return 0
    from mlcnc.cli._errors import error_line
    from mlcnc.data import BadImageError
    from mlcnc.engine import NonFiniteLossError, train

    try:
        result = train(
            cfg,
            config_name=name,
            resume=args.resume,
            force=args.force,
            overwrite=args.overwrite,
        )
    except (NonFiniteLossError, BadImageError) as error:
        print(f"mlcnc train: error: {error_line(error)}", file=sys.stderr)
        return 1
    if result.global_rank == 0:
        print()
        print(result.table())
        print(f"\nrun folder: {result.run_dir}")
        if result.best is None:
            reason = (result.selection or {}).get("reason") or "no val split"
            print(f"({reason}: the last epoch is reported)")
    return 0
