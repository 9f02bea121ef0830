"""``mlcnc export CHECKPOINT --format onnx|torchscript``: a deployable model, checked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlcnc.cli._numbers import positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    from mlcnc.cli._weights import add_weights_options

    parser = subparsers.add_parser(
        "export",
        help="export to ONNX or TorchScript (normalised images -> probabilities), checked",
        description=(
            "Export a trained model as a module that takes a normalised image batch "
            "(B, 3, H, W) and returns per-class probabilities (B, C), with class names and "
            "preprocessing in the file's metadata. The export is then run (onnxruntime or "
            "the loaded TorchScript module) on real images and compared with PyTorch; the "
            "command fails if any probability differs by more than --atol."
        ),
    )
    parser.add_argument("checkpoint", help="run folder (its selected model) or checkpoint file")
    parser.add_argument(
        "--format",
        choices=("onnx", "torchscript", "weights"),
        required=True,
        help="onnx / torchscript: a deployable model, checked; weights: the selected weights "
        "with config and class names (no optimiser, EMA twin or history), a file that "
        "load_trained, evaluate and predict read like a checkpoint",
    )
    parser.add_argument("--out", help="output file (default: beside the checkpoint)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="images or folders to check the export on (default: the checkpoint's test split)",
    )
    parser.add_argument("--check-count", type=positive_int, default=8, help="images to check on")
    parser.add_argument("--atol", type=positive_float, default=1e-4)
    add_weights_options(parser, verb="export")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlcnc.analysis.export import (
        SUFFIX,
        ExportCheckError,
        check_export,
        export_metadata,
        export_model,
    )
    from mlcnc.analysis.loading import check_images, load_for_inspection

    if args.check_count < 2:
        from mlcnc.config import ConfigError

        raise ConfigError(f"--check-count {args.check_count}: must be >= 2")
    from mlcnc.cli._paths import check_output, data_files, run_folder_of
    from mlcnc.config import ConfigError

    given = [args.checkpoint, *(args.images or [])]
    run_dir = run_folder_of(args.checkpoint)
    check_output(
        args.out,
        option="--out",
        inputs=[*given, *data_files(run_dir)],
        runs=[run_dir],
        overwrite=args.overwrite,
    )
    if args.out and args.format in SUFFIX and (args.format == "onnx") != args.out.endswith(".onnx"):
        want = "a .onnx file" if args.format == "onnx" else "a file not named .onnx"
        raise ConfigError(
            f"--out {args.out}: a {args.format} export is {want} (the suffix says how the file "
            "is read back and checked)"
        )
    if args.format == "weights":
        return _export_weights(args)
    trained, preprocessing = load_for_inspection(args.checkpoint, args.ema, "cpu", args.which)
    print(trained.message, file=sys.stderr)
    checkpoint = Path(trained.checkpoint)
    out = Path(args.out) if args.out else checkpoint.with_suffix(SUFFIX[args.format])
    _check_out(args, out, checkpoint)
    try:
        images, source = check_images(trained, args.images, args.check_count)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"mlcnc export: {error}") from None
    print(f"checking on {images.shape[0]} images from {source}", file=sys.stderr)
    metadata = export_metadata(trained.class_names, preprocessing, checkpoint)
    export_model(trained.model, out, args.format, metadata, images[:2])
    try:
        # The whole batch (a size the export was not traced with) and a single image.
        difference = max(
            check_export(out, trained.model, images, args.atol),
            check_export(out, trained.model, images[:1], args.atol),
        )
    except ExportCheckError as error:
        print(f"mlcnc export: check FAILED: {error}", file=sys.stderr)
        return 1
    print(
        f"wrote {out} ({args.format}); max |difference| from PyTorch {difference:.2e} "
        f"(tolerance {args.atol:.0e}) on {images.shape[0]} images"
    )
    return 0


def _check_out(args: argparse.Namespace, out: Path, checkpoint: Path) -> None:
    """The export file through the one output guard, once the checkpoint is known: beside
    the run's checkpoints, an earlier export (never a checkpoint) is replaced only with
    --overwrite."""
    from mlcnc.cli._paths import check_output, data_files, run_folder_of

    check_output(
        out,
        option="--out",
        inputs=[checkpoint, *data_files(run_folder_of(checkpoint))],
        runs=[run_folder_of(checkpoint)],
        overwrite=args.overwrite,
        exports=(".onnx", ".pt"),
    )


def _export_weights(args: argparse.Namespace) -> int:
    from mlcnc.analysis.weights import SUFFIX as WEIGHTS_SUFFIX
    from mlcnc.analysis.weights import export_weights
    from mlcnc.engine.selection import choose_weights
    from mlcnc.engine.trained import load_trained

    checkpoint = choose_weights(args.checkpoint, args.which, args.ema).checkpoint
    out = Path(args.out) if args.out else checkpoint.with_name(checkpoint.stem + WEIGHTS_SUFFIX)
    _check_out(args, out, checkpoint)
    out, message = export_weights(args.checkpoint, out, args.which, args.ema)
    print(message, file=sys.stderr)
    loaded = load_trained(out)  # the file must load as a checkpoint does
    size = out.stat().st_size / 2**20
    print(f"wrote {out} (weights, {size:.1f} MiB; {len(loaded.class_names)} classes)")
    return 0
