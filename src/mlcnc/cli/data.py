"""``mlcnc data``: check a dataset's images, dataset statistics and long-tailed subsets.

mlcnc data check --config voc_lt data.voc2012_root=... # every image of every split
mlcnc data check --csv train.csv --csv test.csv    # your own data (CSV format)
mlcnc data stats --csv train.csv --plot freq.png   # your own data (CSV format)
mlcnc data stats --benchmark synthetic --split test     # the embedded benchmark
mlcnc data stats --benchmark voc_lt --voc2012-root VOCdevkit/VOC2012 --voc2007-root VOCdevkit/VOC2007
mlcnc data make-longtail --csv full.csv --out lt/train.csv --max 800 --min 1 --seed 0

Bad input is one line on stderr naming the file and line, and exit code 1; a bad option
value (a negative count, --tail above --head, --min above --max, a --plot that is not .png)
is one line naming the option, exit code 2, before any data is read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlcnc.cli._numbers import non_negative_int, positive_float, positive_int
from mlcnc.cli._renamed import add_old_spelling


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="dataset statistics and long-tailed subsets")
    commands = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    _register_check(commands)
    _register_stats(commands)
    _register_make_longtail(commands)


def _register_check(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check",
        help="check every image of a dataset; list all problems (file:line: image: reason)",
        description="Name the dataset with --config NAME [key=value ...] (as for train) or "
        "with --csv FILE (repeatable). Exit code 1 if any image is bad.",
    )
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a config name or YAML file (its data: part is read)")
    source.add_argument(
        "--csv", type=Path, action="append", help="a split in the CSV format (repeatable)"
    )
    check.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    check.add_argument("--classes", type=Path, help="class list for --csv (one name per line)")
    check.add_argument(
        "--max-pixels",
        type=positive_int,
        help="largest image in pixels (default: the config's data.max_image_pixels, "
        "else 89,478,485)",
    )
    check.add_argument("--workers", type=positive_int, help="threads (default: up to 8)")
    check.add_argument(
        "--decode",
        action="store_true",
        help="decode every image fully (slower; finds truncated JPEGs)",
    )
    check.set_defaults(func=_reporting_errors(_check))


def _register_stats(commands: argparse._SubParsersAction) -> None:
    stats = commands.add_parser(
        "stats",
        help="per-class counts, groups, imbalance, cardinality, co-occurrence; frequency plot",
        description="Name the dataset with --csv FILE, or with --benchmark NAME (plus its roots).",
    )
    source = stats.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="a split in the CSV format (image,labels)")
    benchmarks = ("synthetic", "voc_lt", "coco_lt")
    source.add_argument("--benchmark", dest="data", choices=benchmarks, help="a named benchmark")
    add_old_spelling(source, "--data", "--benchmark", "data", choices=benchmarks)
    stats.add_argument(
        "--split", help="split of a named benchmark (train, val, test; default train)"
    )
    stats.add_argument("--classes", type=Path, help="class list for --csv (one name per line)")
    stats.add_argument("--synthetic-root", help="folder of the synthetic benchmark")
    stats.add_argument("--voc2012-root", help="VOCdevkit/VOC2012 folder (voc_lt)")
    stats.add_argument("--voc2007-root", help="VOCdevkit/VOC2007 folder (voc_lt test)")
    stats.add_argument("--coco-root", help="folder with annotations/, train2017/, val2017/")
    stats.add_argument("--split-file", help="local copy of the benchmark's split file")
    _add_thresholds(stats)
    stats.add_argument("--plot", type=Path, help="also write a class-frequency bar plot (PNG)")
    stats.add_argument("--json", type=Path, help="also write the statistics as JSON")
    stats.add_argument(
        "--overwrite", action="store_true", help="replace an existing --plot / --json file"
    )
    stats.add_argument(
        "--top", type=non_negative_int, default=10, help="co-occurring class pairs to list"
    )
    stats.set_defaults(func=_reporting_errors(_stats))


def _register_make_longtail(commands: argparse._SubParsersAction) -> None:
    subset = commands.add_parser(
        "make-longtail",
        help="draw a long-tailed subset of a CSV dataset (Distribution-Balanced procedure)",
        description="Per-class target counts follow a Pareto curve (--pareto-shape) from "
        "--max down to --min; classes are filled greedily in co-occurrence order, as in the "
        "Distribution-Balanced paper (Wu et al., ECCV 2020). Seeded (--seed) and "
        "deterministic. Prints each class's target and count, and the groups by --head / "
        "--tail.",
    )
    subset.add_argument("--csv", type=Path, required=True, help="input split (CSV format)")
    subset.add_argument("--out", type=Path, required=True, help="output CSV (classes.txt beside)")
    subset.add_argument("--classes", type=Path, help="class list for --csv (one name per line)")
    subset.add_argument(
        "--max", type=positive_int, default=800, help="target count of the first class"
    )
    subset.add_argument(
        "--min", type=non_negative_int, default=1, help="target floor of the last class"
    )
    subset.add_argument(
        "--pareto-shape",
        type=positive_float,
        default=6.0,
        help="Pareto shape b (larger: steeper tail)",
    )
    subset.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random draws")
    subset.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_thresholds(subset)
    subset.set_defaults(func=_reporting_errors(_make_longtail))


def _reporting_errors(command: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """Bad input (a dataset error, a missing root, an unavailable split file) becomes one
    line on stderr and exit code 1 instead of a traceback; a bad option or setting
    (``ConfigError``: options that contradict each other, a missing root) exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from mlcnc.data.benchmarks import SplitFileUnavailable
        from mlcnc.schema import ConfigError

        try:
            return command(args)
        except BrokenPipeError:  # `| head`: the boundary in mlcnc.cli ends quietly
            raise
        except (ValueError, OSError, SplitFileUnavailable) as err:
            print(f"mlcnc data {args.data_command}: error: {err}", file=sys.stderr)
            return 2 if isinstance(err, ConfigError) else 1

    return run


def _add_thresholds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--head", type=non_negative_int, default=100, help="head: n_c >= HEAD")
    parser.add_argument("--tail", type=non_negative_int, default=20, help="tail: n_c < TAIL")


def _check_options(args: argparse.Namespace) -> None:
    """Refuse options that contradict each other (``ConfigError``, exit 2, one line naming
    both), before any data is read or anything written."""
    from mlcnc.schema import ConfigError

    if args.tail > args.head:
        raise ConfigError(
            f"--tail {args.tail} is above --head {args.head}: head classes have n_c >= HEAD "
            "images, tail classes n_c < TAIL; give --tail <= --head"
        )
    if getattr(args, "min", None) is not None and args.min > args.max:
        raise ConfigError(
            f"--min {args.min} is above --max {args.max}: class targets run from --max (the "
            "first class) down to --min (the last); give --min <= --max"
        )
    plot = getattr(args, "plot", None)
    if plot is not None and plot.suffix.lower() != ".png":
        raise ConfigError(f"--plot {plot}: plots are written as PNG; give a path ending in .png")


def _read_csv(csv: Path, classes: Path | None, check_files: bool = True):
    from mlcnc.data.readers import read_class_list, read_csv_split

    names = read_class_list(classes) if classes else None
    return read_csv_split(csv, names, check_files=check_files)


def _load_split(args: argparse.Namespace):
    from mlcnc.data import DataConfig, build_splits

    if args.csv is not None:
        return _read_csv(args.csv, args.classes)
    _check_roots(args)
    cfg = DataConfig(
        name=args.data,
        synthetic_root=args.synthetic_root,
        voc2012_root=args.voc2012_root,
        voc2007_root=args.voc2007_root,
        coco_root=args.coco_root,
        voc_lt_split_file=args.split_file if args.data == "voc_lt" else None,
        coco_lt_split_file=args.split_file if args.data == "coco_lt" else None,
    )
    splits = build_splits(cfg)
    args.split = args.split or "train"
    if args.split not in splits:
        from mlcnc.schema import ConfigError

        raise ConfigError(
            f"--split {args.split}: {args.data} has no split {args.split!r}; it has "
            + ", ".join(splits)
        )
    return splits[args.split]


# data stats' options that name a benchmark's split and files: --csv reads one CSV file
BENCHMARK_ONLY = (
    "split",
    "synthetic_root",
    "voc2012_root",
    "voc2007_root",
    "coco_root",
    "split_file",
)


def _check_csv_source(args: argparse.Namespace) -> None:
    """Refuse a benchmark-only option given with --csv (it would be ignored silently)."""
    from mlcnc.schema import ConfigError

    if args.csv is None:
        return
    for key in BENCHMARK_ONLY:
        value = getattr(args, key)
        if value is not None:
            option = f"--{key.replace('_', '-')}"
            raise ConfigError(
                f"{option} {value}: applies to --benchmark only; --csv {args.csv} is the "
                "split itself (drop the option, or name the benchmark with --benchmark)"
            )


def _check_roots(args: argparse.Namespace) -> None:
    """Refuse a named benchmark without the roots it needs, naming the options that give
    them (``data stats`` takes options, not ``data.*`` keys)."""
    from mlcnc.data import REQUIRED_KEYS
    from mlcnc.schema import ConfigError

    uses = {
        "synthetic": ("synthetic_root",),
        "voc_lt": ("voc2012_root", "voc2007_root", "split_file"),
        "coco_lt": ("coco_root", "split_file"),
    }[args.data]
    for key in BENCHMARK_ONLY[1:]:
        if getattr(args, key) is not None and key not in uses:
            raise ConfigError(
                f"--{key.replace('_', '-')} {getattr(args, key)}: --benchmark {args.data} does "
                "not use it (drop the option)"
            )
    missing = [key for key in REQUIRED_KEYS.get(args.data, ()) if getattr(args, key) is None]
    if missing:
        options = " and ".join(f"--{key.replace('_', '-')} DIR" for key in missing)
        raise ConfigError(f"--benchmark {args.data} needs {options}")


def _stats(args: argparse.Namespace) -> int:
    from mlcnc.cli._paths import check_output
    from mlcnc.data.longtail import class_groups, dataset_stats

    given = [args.csv, args.classes, args.csv.parent / "classes.txt" if args.csv else None]
    check_output(args.plot, option="--plot", inputs=given, overwrite=args.overwrite)
    check_output(
        args.json,
        option="--json",
        inputs=given,
        outputs={"--plot": args.plot},
        overwrite=args.overwrite,
    )
    _check_options(args)
    _check_csv_source(args)
    split = _load_split(args)
    stats = dataset_stats(split, head=args.head, tail=args.tail, top_pairs=args.top)
    groups = class_groups(split.class_freq, args.head, args.tail)
    print(_format_stats(stats, groups))
    if args.plot is not None:
        from mlcnc.plots import plot_class_frequency

        plot_class_frequency(
            split.class_freq,
            args.plot,
            class_names=split.class_names,
            groups=groups,
            title=f"{Path(split.source).name}: {len(split)} images per class",
        )
        print(f"class-frequency plot: {args.plot}")
    if args.json is not None:
        from mlcnc.io import write_json

        write_json(args.json, stats)
        print(f"statistics: {args.json}")
    return 0


def _format_stats(stats: dict, groups: dict, targets: Any = None) -> str:
    """The statistics as a table and lines, each number with what it counts and the option
    that set it (``targets``: make-longtail's per-class target counts, a column)."""
    group_of = {int(c): g for g, members in groups.items() for c in members}
    width = max(len(n) for n in stats["class_names"])
    target_head = "" if targets is None else f"  {'target':>7}"
    lines = [
        f"source: {stats['source']}",
        f"{'#':>4}  {'class':<{width}}{target_head}  {'images':>7}  group",
    ]
    for c, (name, n) in enumerate(zip(stats["class_names"], stats["class_freq"], strict=True)):
        target = "" if targets is None else f"  {int(targets[c]):>7}"
        lines.append(f"{c:>4}  {name:<{width}}{target}  {n:>7}  {group_of[c]}")
    sizes = stats["group_sizes"]
    ratio = stats["imbalance_ratio"]
    head, tail = stats["thresholds"]["head"], stats["thresholds"]["tail"]
    lines += [
        f"images: {stats['num_images']}   classes: {stats['num_classes']}",
        f"groups (images per class n_c; --head {head}: head n_c >= {head}, --tail {tail}: "
        f"tail n_c < {tail}): head {sizes['head']} / medium {sizes['medium']} / tail "
        f"{sizes['tail']}",
        "imbalance ratio (max/min n_c): " + ("n/a" if ratio is None else f"{ratio:.1f}"),
        f"label cardinality: {stats['label_cardinality']:.3f} labels per image "
        f"(max {stats['max_labels_per_image']}; {stats['images_without_labels']} without labels)",
    ]
    if stats["empty_classes"]:
        lines.append(f"classes without images: {', '.join(stats['empty_classes'])}")
    if stats["top_cooccurrences"]:
        lines.append("top co-occurring pairs:")
        lines += [f"  {a} + {b}: {n}" for a, b, n in stats["top_cooccurrences"]]
    return "\n".join(lines)


def _check(args: argparse.Namespace) -> int:
    from mlcnc.data.check import check_splits, summarize
    from mlcnc.data.dataset import DEFAULT_MAX_IMAGE_PIXELS
    from mlcnc.schema import ConfigError

    max_pixels = args.max_pixels
    if args.config is not None:
        from mlcnc.config import load_config
        from mlcnc.data import build_splits

        data = load_config(args.config, list(args.overrides)).data
        splits = build_splits(data)
        if max_pixels is None:  # the key may be absent from older configs
            max_pixels = getattr(data, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
    else:
        if args.overrides:
            raise ConfigError(f"key=value overrides need --config, got {' '.join(args.overrides)}")
        splits = {}
        for csv in args.csv:
            name = str(csv)
            if name in splits:
                raise ConfigError(f"--csv {csv}: given twice")
            splits[name] = _read_csv(csv, args.classes, check_files=False)
    if max_pixels is None:
        max_pixels = DEFAULT_MAX_IMAGE_PIXELS
    problems = check_splits(splits, max_pixels, args.workers, decode=args.decode)
    for problem in problems:
        print(problem)
    print(summarize(problems, splits, decode=args.decode))
    return 1 if problems else 0


def _make_longtail(args: argparse.Namespace) -> int:
    import numpy as np

    from mlcnc.data.longtail import (
        class_groups,
        cooccurrence_order,
        dataset_stats,
        make_longtail_subset,
        pareto_reference_counts,
    )
    from mlcnc.data.readers import CLASSES_FILE, DataError, write_csv_split

    _check_options(args)
    inputs = [args.csv, args.classes or args.csv.parent / CLASSES_FILE]
    for given in inputs:
        if _same_file(args.out, given):
            raise DataError(
                f"{args.out}: writing it would overwrite the input {given}; choose another --out"
            )
    if args.out.exists() and not args.overwrite:
        raise DataError(f"{args.out}: already exists; pass --overwrite to replace it")
    from mlcnc.cli._paths import check_output

    check_output(args.out, option="--out", inputs=inputs, overwrite=args.overwrite)
    full = _read_csv(args.csv, args.classes)
    indices = make_longtail_subset(
        full.labels, args.max, args.min, pareto_shape=args.pareto_shape, seed=args.seed
    )
    subset = full.subset(indices, source=str(args.out))
    write_csv_split(subset, args.out)
    stats = dataset_stats(subset, head=args.head, tail=args.tail)
    targets = np.zeros(full.num_classes, dtype=np.int64)
    order = cooccurrence_order(full.labels > 0)
    targets[order] = pareto_reference_counts(
        full.num_classes, args.max, args.min, args.pareto_shape
    )
    print(
        f"long-tailed subset of {args.csv}: class targets on a Pareto curve (--pareto-shape "
        f"{args.pareto_shape:g}) from --max {args.max} down to --min {args.min}, in "
        f"co-occurrence order, --seed {args.seed}"
    )
    groups = class_groups(subset.class_freq, args.head, args.tail)
    print(_format_stats(stats, groups, targets=targets))
    if np.any(targets != subset.class_freq):
        print(
            "images differ from target where the class has too few images, or where a later "
            "class's step added or removed images that also hold it (DB's procedure)"
        )
    print(f"wrote {len(subset)} of {len(full)} images to {args.out}")
    return 0


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (same resolved path, or the same inode)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False
