"""``mlcnc config show``: print the fully resolved config, as ``mlcnc train`` would run it."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="show the resolved config (every key, method defaults included) or list configs",
        description=(
            "mlcnc config show [--config NAME|FILE] [KEY=VALUE ...] prints the config that "
            "`mlcnc train` with the same arguments runs: every key, with the method's "
            "options and the dataset's defaults filled in (e.g. DB's COCO preset for "
            "coco_lt). mlcnc config list prints the shipped config names."
        ),
    )
    commands = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = commands.add_parser("show", help="print the resolved config as YAML")
    show.add_argument(
        "--config",
        metavar="NAME_OR_FILE",
        default="synthetic",
        help="a shipped config name (default 'synthetic') or a YAML file",
    )
    show.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as for train"
    )
    show.set_defaults(func=run_show)
    listing = commands.add_parser("list", help="list the shipped configs")
    listing.set_defaults(func=run_list)


def run_show(args: argparse.Namespace) -> int:
    from mlcnc.config import dump_config, load_config

    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from mlcnc.config import shipped_configs

    print("\n".join(shipped_configs()))
    return 0
