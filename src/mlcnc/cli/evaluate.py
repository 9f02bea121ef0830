"""``mlcnc evaluate``: the mAP table, per-class AP and F1 of a checkpoint (text and JSON)."""

from __future__ import annotations

import argparse
import sys

from mlcnc.cli._device import device_option
from mlcnc.cli._numbers import positive_int, probability
from mlcnc.cli._renamed import add_old_spelling


def register(subparsers: argparse._SubParsersAction) -> None:
    from mlcnc.cli._weights import add_weights_options

    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a run or checkpoint: Total / Head / Medium / Tail mAP, per-class AP and F1",
        description=(
            "Evaluate the model a run selected (a run folder: best.ckpt with a val split, "
            "else last.ckpt) or a checkpoint file on a split of the dataset it was trained "
            "on, in the run's precision: the regular and the EMA weights, the selected one "
            "marked, or only the one --ema / --no-ema asks for."
        ),
    )
    parser.add_argument(
        "checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder or a .ckpt file"
    )
    add_weights_options(parser, verb="evaluate only")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="changes to the checkpoint's data config, e.g. coco_root=/data/coco (as for inspect)",
    )
    add_old_spelling(parser, "--data", "KEY=VALUE after the run", "old_overrides", nargs="*")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument(
        "--threshold", type=probability, default=0.5, help="score threshold for F1 (default 0.5)"
    )
    parser.add_argument("--batch-size", type=positive_int, help="evaluation batch size")
    parser.add_argument(
        "--device", type=device_option, help="cpu or cuda (default: cuda when available)"
    )
    parser.add_argument("--json", metavar="FILE", help="write the full result as JSON")
    parser.add_argument(
        "--thresholds",
        choices=("global", "per-class"),
        default="global",
        help="global (default): --threshold for every class; per-class: a threshold per class "
        "tuned for F1 on the val split, stored in the run folder (thresholds.json)",
    )
    parser.add_argument(
        "--predictions",
        metavar="FILE",
        help="write per-image scores next to the true labels as CSV (image, model, labels, "
        "predicted, score:<class>...)",
    )
    parser.add_argument(
        "--scores",
        choices=("logits", "softmax"),
        help="what AP ranks: logits, or softmax over classes per image (LMPT's and LM-CLIP's "
        "protocol); default: the run's train.eval_scores. Recomputes without retraining",
    )
    parser.add_argument("--per-class", action="store_true", help="also print per-class AP and F1")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlcnc.cli._errors import error_line
    from mlcnc.cli._paths import check_output, data_files, run_folder_of
    from mlcnc.config import ConfigError
    from mlcnc.data import BadImageError, DataError
    from mlcnc.data.check import BadImagesError
    from mlcnc.engine import evaluate_checkpoint
    from mlcnc.io import write_json

    run_dir = run_folder_of(args.checkpoint)
    check_output(
        args.json,
        option="--json",
        inputs=[args.checkpoint, *data_files(run_dir)],
        runs=[run_dir],
        overwrite=args.overwrite,
    )
    check_output(
        args.predictions,
        option="--predictions",
        inputs=[args.checkpoint, *data_files(run_dir)],
        runs=[run_dir],
        overwrite=args.overwrite,
        outputs={"--json": args.json},
    )
    try:
        result = evaluate_checkpoint(
            args.checkpoint,
            data_overrides=[*args.overrides, *getattr(args, "old_overrides", [])],
            split=args.split,
            threshold=args.threshold,
            batch_size=args.batch_size,
            device=args.device,
            checkpoint=args.which,
            use_ema=args.ema,
            predictions_file=args.predictions,
            per_class_thresholds=args.thresholds == "per-class",
            scores=args.scores,
        )
    except (BadImageError, BadImagesError, DataError, FileNotFoundError) as error:
        # data and checkpoint errors (an unreadable image, a missing or bad checkpoint)
        print(f"mlcnc evaluate: error: {error_line(error)}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError) as error:  # usage and config errors
        print(f"mlcnc evaluate: error: {error_line(error)}", file=sys.stderr)
        return 2
    print(result["loaded"])
    print(result["table"])
    for name, scores in result["models"].items():
        f1 = scores["f1"]
        used = result["threshold"]
        print(f"{name}: CF1 {f1['CF1']:.2f}  OF1 {f1['OF1']:.2f} (threshold {used})")
    if args.per_class:
        for name, scores in result["models"].items():
            print(f"\n{name}: per-class AP / F1 (%)")
            print(f"{'class':<24} {'group':<7} {'train':>6} {'AP':>7} {'F1':>7}")
            for row in scores["per_class"]:
                ap = "n/a" if row["ap"] is None else f"{row['ap']:.2f}"
                print(
                    f"{row['class']:<24} {row['group']:<7} {row['train_positives']:>6} "
                    f"{ap:>7} {row['f1']:>7.2f}"
                )
    if args.json:
        write_json(args.json, {k: v for k, v in result.items() if k != "table"})
        print(f"wrote {args.json}")
    if args.predictions:
        print(f"wrote {args.predictions} (per-image scores, {result['num_images']} images)")
    return 0
