"""``mlcnc benchmark``: train several methods x seeds the same way and print the Table 1 layout.

mlcnc benchmark --config synthetic --methods erm,rs,asl,mlcnc --seeds 0,1,2 optim.epochs=10
mlcnc benchmark --config voc_lt --methods all data.voc2012_root=... db:method.loss.preset=voc
"""

from __future__ import annotations

import argparse
import shlex
import sys

from mlcnc.cli._numbers import non_negative_int, positive_float, positive_int
from mlcnc.cli._renamed import add_old_spelling


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="compare methods (baselines and MLC-NC) over seeds; writes the Table 1 layout",
        description=(
            "Train every method with every seed under one config (same backbone, image size, "
            "optimiser and epoch budget) and write the last-epoch test mAP table (Total / "
            "Head / Medium / Tail, mean ± std over seeds) as results.md, results.csv and "
            "results.png in --output. Running the same command again resumes: finished runs "
            "are read back, an interrupted one continues from its checkpoint."
        ),
    )
    parser.add_argument(
        "--config",
        dest="data",
        default="synthetic",
        metavar="NAME_OR_FILE",
        help="a shipped config (synthetic, voc_lt, coco_lt, ...) or a YAML file (default "
        "synthetic), as for train",
    )
    add_old_spelling(parser, "--data", "--config", "data")
    parser.add_argument(
        "--methods",
        help="comma-separated method names, or 'all' (see --list-methods); required",
    )
    parser.add_argument(
        "--seeds", type=_int_list, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)"
    )
    parser.add_argument(
        "--output", metavar="DIR", help="benchmark folder (default runs/benchmark-<data>)"
    )
    parser.add_argument(
        "--model",
        choices=("regular", "ema"),
        default="regular",
        help="which model the table reports, at the last epoch (default regular; both are stored)",
    )
    parser.add_argument(
        "--recipes",
        choices=("shared", "published"),
        default="shared",
        help=(
            "shared (default): every method under the recipe of --config, the fair "
            "comparison; published: methods whose authors published a multi-label recipe "
            "run under it on voc_lt / coco_lt (DB, DB-Focal, CB-Focal: the DB paper's; "
            "ML-GCN's; ASL's), the others under --config's"
        ),
    )
    parser.add_argument(
        "--no-plot", action="store_true", help="skip the grouped bar chart (results.png)"
    )
    add_fan_out_options(parser)
    parser.add_argument(
        "--list-methods", action="store_true", help="list the registered methods and exit"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help=(
            "config overrides shared by every run (e.g. optim.epochs=10 data.image_size=64), "
            "or for one method as METHOD:KEY=VALUE (e.g. db:method.loss.preset=coco)"
        ),
    )
    parser.set_defaults(func=run)


def add_fan_out_options(parser: argparse.ArgumentParser) -> None:
    """--launcher, --jobs and the SLURM resources of one run (``mlcnc.launch.fanout``)."""
    fan = parser.add_argument_group(
        "fan-out",
        "each method x seed run in a process or SLURM job of its own (mlcnc.launch.fanout); "
        "partial tables while they run, the full one when all finished; rerunning the "
        "command reads finished runs back and trains only the missing or failed ones",
    )
    fan.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local (default): on this machine; slurm: one submitit job array (logs in "
        "OUTPUT/slurm/)",
    )
    fan.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="local: N runs at once, each pinned to 1/N of the cores (and of the GPUs when "
        "there are N or more); logs in OUTPUT/logs/ (default 1: one after another, in "
        "this process)",
    )
    fan.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition")
    fan.add_argument(
        "--slurm-time", type=positive_int, default=60, metavar="MIN", help="time limit per run (60)"
    )
    fan.add_argument(
        "--slurm-gpus", type=non_negative_int, default=0, metavar="N", help="GPUs per run (0)"
    )
    fan.add_argument(
        "--slurm-cpus", type=positive_int, default=1, metavar="N", help="CPUs per run (1)"
    )
    fan.add_argument("--slurm-mem", type=positive_float, metavar="GB", help="memory per run")
    fan.add_argument(
        "--slurm-parallel",
        type=positive_int,
        metavar="N",
        help="at most N runs of the array at once",
    )


def run(args: argparse.Namespace) -> int:
    from mlcnc.benchmark import run_benchmark, table_order
    from mlcnc.config import ConfigError
    from mlcnc.data import DataError
    from mlcnc.launch.fanout import SlurmOptions
    from mlcnc.methods import METHODS

    if args.list_methods:
        print("\n".join(table_order(METHODS.names())))
        return 0
    if not args.methods:
        print(
            "mlcnc benchmark: error: --methods is required (e.g. --methods erm,mlcnc)",
            file=sys.stderr,
        )
        return 2
    methods = (
        table_order(METHODS.names())
        if args.methods.strip() == "all"
        else [m.strip() for m in args.methods.split(",") if m.strip()]
    )
    from mlcnc.cli._paths import check_output

    check_output(args.output, option="--output", inputs=[args.data], folder=True)
    command = shlex.join(["mlcnc", *sys.argv[1:]]) if sys.argv[1:2] == ["benchmark"] else None
    try:
        result = run_benchmark(
            args.data,
            methods,
            seeds=args.seeds,
            output=args.output,
            overrides=args.overrides,
            model=args.model,
            command=command,
            plot=not args.no_plot,
            recipes=args.recipes,
            launcher=args.launcher,
            jobs=args.jobs,
            slurm=SlurmOptions(
                partition=args.slurm_partition,
                time_min=args.slurm_time,
                gpus=args.slurm_gpus,
                cpus=args.slurm_cpus,
                mem_gb=args.slurm_mem,
                parallel=args.slurm_parallel,
            ),
        )
    except DataError:
        raise  # bad data or checkpoint: one line from main(), exit 1
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"mlcnc benchmark: error: {error}", file=sys.stderr)
        return 2
    print()
    print(result.files["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in result.files.values()))
    if result.failures:
        print(
            f"{len(result.failures)} run(s) failed: {', '.join(result.failures)}", file=sys.stderr
        )
        for name, message in result.failures.items():
            print(f"  {name}: {message.splitlines()[0]}", file=sys.stderr)
        return 1
    return 0
