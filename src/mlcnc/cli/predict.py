"""``mlcnc predict CHECKPOINT IMAGE_OR_FOLDER...``: labels and scores per image, streamed."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from mlcnc.cli._device import device_option
from mlcnc.cli._numbers import non_negative_int, positive_int, probability


def register(subparsers: argparse._SubParsersAction) -> None:
    from mlcnc.cli._weights import add_weights_options

    parser = subparsers.add_parser(
        "predict",
        help="labels and scores for images and folders of images",
        description=(
            "Predict the labels of images with a trained model. Results stream to stdout (or "
            "--output) batch by batch; unreadable images are reported on stderr and skipped."
        ),
    )
    parser.add_argument("checkpoint", help="run folder (its selected model) or checkpoint file")
    parser.add_argument("inputs", nargs="+", help="image files and folders (searched recursively)")
    choose = parser.add_mutually_exclusive_group()
    choose.add_argument(
        "--threshold",
        type=probability,
        default=None,
        help="predict classes with p >= T (default 0.5)",
    )
    choose.add_argument(
        "--top-k", type=positive_int, default=None, help="predict the K best classes"
    )
    choose.add_argument(
        "--thresholds",
        choices=("global", "per-class"),
        default="global",
        help="per-class: a threshold per class tuned for F1 on the run's val split (stored "
        "in the run folder, thresholds.json) instead of --threshold",
    )
    parser.add_argument("--format", choices=("json", "csv"), default="json")
    parser.add_argument("--output", help="write results to this file instead of stdout")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file (and the attention maps in --attention)",
    )
    parser.add_argument("--all-scores", action="store_true", help="also give every class's p")
    parser.add_argument(
        "--attention",
        metavar="DIR",
        help="write attention overlays per predicted class and a contact sheet to DIR",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=positive_int,
        metavar="N",
        help="refuse larger images from their header (default: the run's data.max_image_pixels)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument(
        "--workers", type=non_negative_int, default=0, help="image decoding processes"
    )
    parser.add_argument(
        "--device", type=device_option, default="auto", help="auto (CUDA if present), cpu, cuda"
    )
    add_weights_options(parser)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


class _LazyOutput:
    """Where the results go (stdout or ``--output``), opened at the first prediction: when
    no image can be read, nothing is written that could pass for an empty result. The
    ``--output`` file is written atomically: into a temporary file beside it, renamed over
    it only when every prediction is written (an interrupt leaves the old file, never half
    of the new one)."""

    def __init__(self, path: str | None, fmt: str, names: list[str], all_scores: bool) -> None:
        self.path, self.fmt, self.names, self.all_scores = path, fmt, names, all_scores
        self.writer = None
        self.stream = None
        self.tmp: Path | None = None

    def write(self, prediction) -> None:
        with self._naming_the_file():
            if self.writer is None:
                from mlcnc.analysis.predict import PredictionWriter

                if self.path:
                    from mlcnc.io import temporary_name

                    self.tmp = temporary_name(self.path)
                    self.stream = open(self.tmp, "w", newline="")  # noqa: SIM115
                else:
                    self.stream = sys.stdout
                self.writer = PredictionWriter(self.stream, self.fmt, self.names, self.all_scores)
            self.writer.write(prediction)

    def close(self, commit: bool = True) -> None:
        """Finish the output; ``commit=False`` (an error, an interrupt) drops the temporary
        file and leaves ``--output`` as it was."""
        with self._naming_the_file():
            if self.writer is None:
                return
            try:
                if commit:
                    self.writer.close()
                if self.tmp is not None:
                    self.stream.flush()
                    if commit:
                        os.fsync(self.stream.fileno())
                    self.stream.close()
                    if commit:
                        os.replace(self.tmp, self.path)
            finally:
                if self.tmp is not None:
                    self.tmp.unlink(missing_ok=True)

    def _naming_the_file(self):
        """An OS error writing ``--output`` (a full disk...) names the file."""
        import contextlib

        @contextlib.contextmanager
        def naming():
            try:
                yield
            except OSError as error:
                if self.path and error.filename is None:
                    raise OSError(error.errno, error.strerror, self.path) from error
                raise

        return naming()


def _check_order(args: argparse.Namespace) -> None:
    """``predict IMAGE RUN`` (the arguments swapped): one line saying so, exit 2."""
    from mlcnc.analysis.predict import IMAGE_SUFFIXES
    from mlcnc.cli._paths import resolved
    from mlcnc.config import ConfigError

    def is_run(path: str) -> bool:
        found = resolved(path)
        return found.suffix == ".ckpt" or (found / "checkpoints").is_dir()

    image = Path(args.checkpoint).suffix.lower() in IMAGE_SUFFIXES
    runs = [item for item in args.inputs if is_run(item)]
    if runs or image:
        shown = runs[0] if runs else args.checkpoint
        raise ConfigError(
            f"{shown}: the arguments look swapped: the run folder or checkpoint comes first, "
            "then the images: mlcnc predict RUN_OR_CHECKPOINT IMAGE_OR_FOLDER..."
        )


def _check_outputs(args: argparse.Namespace, inputs: list, runs: list) -> None:
    """--output and --attention through the one output guard."""
    from mlcnc.analysis.attention import ATTENTION_FILES
    from mlcnc.cli._paths import check_output

    check_output(
        args.output,
        option="--output",
        inputs=inputs,
        runs=runs,
        overwrite=args.overwrite,
        outputs={"--attention": args.attention},
    )
    check_output(
        args.attention,
        option="--attention",
        inputs=inputs,
        runs=runs,
        folder=True,
        files=ATTENTION_FILES,
        overwrite=args.overwrite,
        outputs={"--output": args.output},
    )


def run(args: argparse.Namespace) -> int:

    from tqdm import tqdm

    from mlcnc.analysis.attention import ContactSheet, write_attention_maps
    from mlcnc.analysis.loading import load_for_inspection, pick_device
    from mlcnc.analysis.predict import find_images, predict_images

    threshold = (
        None if args.top_k is not None else (0.5 if args.threshold is None else args.threshold)
    )
    _check_order(args)
    try:
        paths = find_images(args.inputs)
    except FileNotFoundError as error:
        raise SystemExit(f"mlcnc predict: {error}") from None
    if not paths:
        print("mlcnc predict: no image files found in the inputs", file=sys.stderr)
        return 1
    from mlcnc.cli._paths import run_folder_of

    given = [args.checkpoint, *args.inputs, *paths]
    _check_outputs(args, given, [run_folder_of(args.checkpoint)])
    device = pick_device(args.device)
    trained, preprocessing = load_for_inspection(args.checkpoint, args.ema, device, args.which)
    print(trained.message, file=sys.stderr)
    if args.thresholds == "per-class":
        from mlcnc.engine.thresholds import thresholds_of

        threshold = thresholds_of(args.checkpoint, args.which, args.ema, device)
        print(
            f"per-class thresholds tuned on val: {threshold.min():.3f} to {threshold.max():.3f}",
            file=sys.stderr,
        )
    _check_outputs(args, [trained.checkpoint], [run_folder_of(trained.checkpoint)])
    names = trained.class_names
    with_attention = args.attention is not None
    sheet = ContactSheet() if with_attention else None

    out = _LazyOutput(args.output, args.format, names, args.all_scores)
    bar = tqdm(total=len(paths), unit="img", disable=args.no_progress, file=sys.stderr)
    skipped: list[str] = []
    count = 0
    done = False
    try:
        predictions = predict_images(
            trained.model,
            paths,
            trained.transform,
            threshold=threshold,
            top_k=args.top_k,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=device,
            preprocessing=preprocessing,
            with_attention=with_attention,
            keep_images=with_attention,
            progress=bar.update,
            max_pixels=args.max_image_pixels or trained.config.data.max_image_pixels,
        )
        for index, prediction in enumerate(predictions):
            if prediction.error is not None:
                # the pixel limit's hint names predict's option, not the config key
                prediction.error = str(prediction.error).replace(
                    "data.max_image_pixels", "--max-image-pixels"
                )
                skipped.append(prediction.error)
                tqdm.write(f"skipped unreadable image: {prediction.error}", file=sys.stderr)
                continue
            out.write(prediction)
            count += 1
            if with_attention:
                write_attention_maps(prediction, index, names, args.attention)
                sheet.add(prediction, names)
        done = True
    except ValueError as error:  # e.g. a model without attention maps
        raise SystemExit(f"mlcnc predict: {error}") from None
    finally:
        bar.close()
        out.close(commit=done)
    return _report(args, count, skipped, sheet)


def _report(args: argparse.Namespace, count: int, skipped: list[str], sheet: Any) -> int:
    """The closing lines of ``predict`` (and the attention contact sheet); the exit code."""
    if not count:
        print(
            f"mlcnc predict: error: no image could be read: predicted 0 images; skipped "
            f"{len(skipped)} unreadable (first: {skipped[0] if skipped else 'none'}); nothing "
            "was written",
            file=sys.stderr,
        )
        return 1
    if sheet is not None:
        sheet_path = sheet.save(Path(args.attention) / "contact_sheet.png")
        print(f"attention maps in {args.attention}, contact sheet {sheet_path}", file=sys.stderr)
    print(f"predicted {count} images; skipped {len(skipped)} unreadable", file=sys.stderr)
    return 0
