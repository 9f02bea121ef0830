"""The options that choose a trained model's weights (predict, export, inspect, evaluate)."""

from __future__ import annotations

import argparse


def add_weights_options(parser: argparse.ArgumentParser, verb: str = "use") -> None:
    """``--checkpoint best|last`` and ``--ema`` / ``--no-ema`` (default: the run's selection)."""
    parser.add_argument(
        "--checkpoint",
        dest="which",
        choices=("best", "last"),
        default=None,
        help="which checkpoint of a run folder (default: the one the run selected: best.ckpt "
        "with a val split, else last.ckpt)",
    )
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"{verb} the EMA (--ema) or the regular (--no-ema) weights (default: the variant "
        "the run selected, as the checkpoint records it; regular for older checkpoints)",
    )
