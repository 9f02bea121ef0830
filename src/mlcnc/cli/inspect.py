"""``mlcnc inspect CHECKPOINT``: the neural-collapse report of a trained model on a dataset."""

from __future__ import annotations

import argparse
import sys

from mlcnc.cli._device import device_option
from mlcnc.cli._numbers import non_negative_int, positive_int
from mlcnc.cli._renamed import add_old_spelling


def register(subparsers: argparse._SubParsersAction) -> None:
    from mlcnc.cli._weights import add_weights_options

    parser = subparsers.add_parser(
        "inspect",
        help="neural-collapse report (NC1/NC2/NC3, cosine heat maps, AP vs frequency)",
        description=(
            "Run a trained model over a dataset split and write the neural-collapse report: "
            "NC1/NC2/NC3, heat maps of pairwise cosines of class means and of the classifier "
            "against -1/(C-1), per-class AP against training frequency; PNGs and report.md."
        ),
    )
    parser.add_argument("checkpoint", help="run folder (its selected model) or checkpoint file")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="changes to the checkpoint's data config, e.g. voc2007_root=/data/VOC2007",
    )
    parser.add_argument(
        "--split",
        dest="data",
        default="test",
        help="a split of the checkpoint's dataset (train, val, test; default test; the "
        "classical collapse measure is on train) or a CSV file in the dataset format",
    )
    add_old_spelling(parser, "--data", "--split", "data")
    parser.add_argument("--out", help="output folder (default: <run>/inspect-<split>)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the report files already in --out"
    )
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--workers", type=non_negative_int, default=0)
    parser.add_argument(
        "--device", type=device_option, default="auto", help="auto (CUDA if present), cpu, cuda"
    )
    add_weights_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlcnc.analysis.collapse import REPORT_FILES, collapse_report
    from mlcnc.analysis.loading import load_for_inspection, pick_device, resolve_split
    from mlcnc.cli._errors import error_line
    from mlcnc.config import ConfigError
    from mlcnc.data import BadImageError, DataError

    device = pick_device(args.device)
    trained, _ = load_for_inspection(args.checkpoint, args.ema, device, args.which)
    print(trained.message, file=sys.stderr)
    try:
        split, label = resolve_split(trained, args.data, args.overrides)
    except ConfigError:
        raise  # a bad override: one line, exit 2 (mlcnc.cli)
    except (DataError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"mlcnc inspect: error: {error}") from None
    checkpoint = Path(trained.checkpoint)
    data_name = Path(args.data).stem if args.data.endswith(".csv") else args.data
    default_out = (
        checkpoint.parent.parent / f"inspect-{data_name}"
        if checkpoint.parent.name == "checkpoints"
        else checkpoint.with_name(f"{checkpoint.stem}-inspect-{data_name}")
    )
    out_dir = Path(args.out) if args.out else default_out
    from mlcnc.cli._paths import check_output, run_folder_of

    check_output(
        out_dir,
        option="--out",
        inputs=[args.checkpoint, checkpoint, args.data if args.data.endswith(".csv") else None],
        runs=[run_folder_of(args.checkpoint), run_folder_of(checkpoint)],
        folder=True,
        files=REPORT_FILES,
        overwrite=args.overwrite,
    )
    print(f"inspecting {checkpoint} on {label} ({len(split)} images)", file=sys.stderr)
    try:
        result = collapse_report(
            trained,
            split,
            out_dir,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=str(device),
            skip_bad_images=trained.config.data.skip_bad_images,
            split_label=label,
        )
    except BadImageError as error:  # an image of the split cannot be read
        raise SystemExit(f"mlcnc inspect: error: {error_line(error)}") from None
    collapse = result["collapse"] or {}
    numbers = ", ".join(
        f"{key} {collapse[key]:.4f}"
        for key in ("nc1", "nc2_equinorm", "nc2_cos_mean_dev", "nc3")
        if collapse.get(key) is not None
    )
    print(f"{numbers or 'no collapse numbers (no per-class projections)'}")
    print(f"report: {out_dir / 'report.md'}")
    return 0
