"""The benchmark runner: every method x seed trained the same way, then the Table 1 layout.

``run_benchmark`` trains each (method, seed) with one shared config (the data config plus
shared ``key=value`` overrides: same backbone, image size, optimiser and epoch budget;
only ``method.name`` and ``train.seed`` change), reads each run's **last-epoch test mAP**
(Total / Head / Medium / Tail; the regular model unless ``model="ema"``) and writes the
mean +/- sample std over seeds as Markdown, CSV and a grouped bar chart. Nothing is
selected on test: no best epoch, no per-method tuning.

Layout of ``output``::

    benchmark.json           what was asked (data, methods, seeds, overrides, model)
    runs/<method>-seed<s>/   one engine run folder each; result.json once it finished
    results.md results.csv results.png   the table (rewritten after every finished run)

An interrupted benchmark resumes when the same command is run again: runs with a
``result.json`` are read back, not repeated (their config must match the planned one);
a run with a checkpoint but no result continues from it through the engine's resume; a run
folder with neither is moved aside and the run restarts.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlcnc.benchmark_tables import (
    MethodRow,
    RunResult,
    aggregate,
    environment_note,
    write_tables,
)
from mlcnc.config import (
    RUNTIME_ONLY_KEYS,
    Config,
    ConfigError,
    config_diff,
    config_from_dict,
    config_to_dict,
    load_config,
)
from mlcnc.data.readers import DataError
from mlcnc.groups import MAP_GROUPS as GROUPS
from mlcnc.io import write_json
from mlcnc.metrics import scores_note

MODELS = {"regular": "test", "ema": "test_ema"}
"""Which model the table reports -> the prefix of its test metrics in an epoch record."""

RESULT_FILE = "result.json"
RESERVED_KEYS = ("method.name", "train.seed", "train.output")
"""Config keys the runner sets for every run; an override may not set them."""

IGNORED_KEYS = RUNTIME_ONLY_KEYS
"""Keys that may differ between a finished run and the planned one (where and how verbose)."""


def table_order(names: Sequence[str]) -> list[str]:
    """``names`` in the paper's Table 1 order (baselines, MLC-NC, ablations), others last."""
    from mlcnc.methods import table_order as registered_order

    return registered_order(list(names))


TrainFn = Callable[[Config, Path | None], Mapping[str, Any]]
"""``train_fn(cfg, resume)`` trains ``cfg`` (continuing the run folder ``resume`` when not
None) and returns the last epoch's metrics record (flat keys such as ``test/map_total``)."""


def engine_train(cfg: Config, resume: Path | None) -> Mapping[str, Any]:
    """The default ``TrainFn``: ``mlcnc.engine.train``, returning its last-epoch record."""
    from mlcnc.engine import train

    try:
        return train(cfg, config_name="benchmark", resume=resume).last
    finally:
        gc.collect()  # free the run's model and loaders (reference cycles) before the next


@dataclass
class BenchmarkResult:
    rows: list[MethodRow]
    runs: list[RunResult]
    failures: dict[str, str] = field(default_factory=dict)  # "<method>-seed<s>" -> error
    files: dict[str, Path] = field(default_factory=dict)  # "markdown", "csv", "plot"


# --------------------------------------------------------------------------- planning
def split_overrides(
    overrides: Sequence[str], methods: Sequence[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """Shared ``key=value`` overrides and per-method ones written ``<method>:key=value``."""
    shared: list[str] = []
    per_method: dict[str, list[str]] = {m: [] for m in methods}
    for text in overrides:
        key = text.partition("=")[0]
        method, colon, _ = key.partition(":")
        if colon:
            if method not in per_method:
                raise ConfigError(
                    f"override {text!r} is for method {method!r}, which is not benchmarked "
                    f"({', '.join(methods)})"
                )
            per_method[method].append(text[len(method) + 1 :])
            key = key[len(method) + 1 :]
        else:
            shared.append(text)
        if key.strip() in RESERVED_KEYS:
            raise ConfigError(
                f"override {text!r} sets {key.strip()}, which the benchmark sets per run; "
                "use --methods, --seeds and --output instead"
            )
    return shared, per_method


def run_config(
    data: str,
    method: str,
    seed: int,
    run_dir: Path,
    shared: Sequence[str],
    own: Sequence[str],
    log: Callable[[str], None] = print,
) -> Config:
    """The config of one run: data config <- shared overrides <- method overrides <- run keys.

    ``load_config`` leaves out the data config's own ``method.model`` / ``method.loss``
    options that this method does not take; one given on the command line that the method
    does not take is an error here, before any run starts.
    """
    from mlcnc.config import parse_override
    from mlcnc.methods import method_defaults

    overrides = [*shared, *own]
    defaults = method_defaults(method)
    for text in overrides if defaults is not None else ():
        for part in ("model", "loss"):
            given = parse_override(text).get("method", {}).get(part)
            foreign = sorted(set(given) - set(defaults[part])) if isinstance(given, dict) else []
            if foreign:
                key = foreign[0]
                raise ConfigError(
                    f"override method.{part}.{key} does not apply to method {method!r} "
                    f"(its {part} options: {', '.join(sorted(defaults[part])) or 'none'}); "
                    f"give it for one method as <method>:method.{part}.{key}=..."
                )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(
            data,
            [*overrides, f"method.name={method}", f"train.seed={seed}", f"train.output={run_dir}"],
        )
    for warning in caught:
        log(f"[benchmark] {warning.message}")
    return cfg


def _silent(message: str) -> None:
    pass


def run_name(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


# --------------------------------------------------------------------------- one run
def _group_maps(record: Mapping[str, Any], prefix: str) -> dict[str, float] | None:
    if f"{prefix}/map_total" not in record:
        return None
    values = {}
    for group in GROUPS:
        value = record.get(f"{prefix}/map_{group}")
        values[group] = math.nan if value is None else float(value)
    return values


def result_from_record(
    method: str, seed: int, run_dir: Path, record: Mapping[str, Any]
) -> RunResult:
    """A ``RunResult`` from a run's last-epoch record; an error if it has no test metrics."""
    maps = {}
    for model, prefix in MODELS.items():
        values = _group_maps(record, prefix)
        if values is not None:
            maps[model] = values
    if "regular" not in maps:
        raise ValueError(
            f"run {run_dir} finished without test metrics (test/map_total missing from its "
            f"last epoch record; keys: {', '.join(sorted(record))})"
        )
    return RunResult(method, seed, run_dir, int(record.get("epoch", -1)), maps)


def write_run_result(result: RunResult, cfg: Config) -> Path:
    path = result.run_dir / RESULT_FILE
    payload = {
        "method": result.method,
        "seed": result.seed,
        "epoch": result.epoch,
        "map": result.map,
        "seconds": result.seconds,
        "scores": cfg.train.eval_scores,
        "note": "last-epoch test mAP (%), regular and EMA models; nothing selected on test; "
        + scores_note(cfg.train.eval_scores),
        "config": config_to_dict(cfg),
    }
    return write_json(path, payload)  # a NaN mAP is written as null


def read_run_result(path: Path, cfg: Config) -> RunResult:
    """Read a finished run's ``result.json``, refusing one made with a different config."""
    payload = json.loads(path.read_text())
    stored = payload["config"]
    # Keys added since the run was made take today's defaults, as on --resume; with a key
    # removed or renamed since, the config is compared as written (it shows as a difference).
    with contextlib.suppress(ConfigError):
        stored = config_to_dict(config_from_dict(stored))
    differing = [key for key in config_diff(stored, config_to_dict(cfg)) if key not in IGNORED_KEYS]
    if differing:
        raise ConfigError(
            f"{path} was made with a different config (differs in: {', '.join(differing)}); "
            "a table must compare runs made the same way: use another --output, or delete "
            "that run folder to redo it"
        )
    _check_same_data(path, cfg)
    return RunResult(
        payload["method"],
        int(payload["seed"]),
        path.parent,
        int(payload["epoch"]),
        payload["map"],
        payload.get("seconds"),
        cfg.train.eval_scores,  # the same config, so the same scores
    )


_CURRENT_DATA: dict[str, dict[str, Any]] = {}
"""The splits as a run would train on them now, by data config (read once per benchmark)."""


def _check_same_data(path: Path, cfg: Config) -> None:
    """Refuse a finished run whose data changed since (same CSV paths, other rows or labels):
    its result.json would put a number for the old data in the table. The data are compared
    as a resume compares them: the fingerprints its last checkpoint records of the train,
    val and test splits against the splits read now (a run without them is not compared)."""
    from mlcnc.engine.checkpoint import (
        CHECKPOINT_DIR,
        LAST,
        compare_data,
        compare_eval_data,
        load_checkpoint,
    )

    checkpoint = path.parent / CHECKPOINT_DIR / LAST
    if not checkpoint.is_file():
        return
    try:
        state = load_checkpoint(checkpoint)
    except DataError:  # not readable: the result stands as written
        return
    if not (state.get("data") or {}).get("fingerprint"):
        return
    key = json.dumps(config_to_dict(cfg.data), sort_keys=True)
    if key not in _CURRENT_DATA:
        from mlcnc.data import build_splits
        from mlcnc.engine.data_check import checked_splits

        _CURRENT_DATA[key] = checked_splits(cfg.data, build_splits(cfg.data))[0]
    splits = _CURRENT_DATA[key]
    problems, _ = compare_data(state, splits["train"], checkpoint)
    problems += compare_eval_data(state, {k: v for k, v in splits.items() if k != "train"})
    if problems:
        raise DataError(
            f"{path} was made on other data (differs in: {'; '.join(problems)}); a table must "
            "compare runs on the same data: use another --output, or delete that run folder "
            "to redo it"
        )


def run_one(
    cfg: Config, method: str, seed: int, run_dir: Path, train_fn: TrainFn, log
) -> RunResult:
    """Finish one run: read it back if done, resume it if it has a checkpoint, else train."""
    result_path = run_dir / RESULT_FILE
    if result_path.is_file():
        log(f"[benchmark] {run_name(method, seed)}: finished earlier, read from {result_path}")
        return read_run_result(result_path, cfg)
    resume = None
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        resume = run_dir
        log(f"[benchmark] {run_name(method, seed)}: resuming from {run_dir}/checkpoints/last.ckpt")
    elif run_dir.exists():
        aside = _free_name(run_dir.with_name(f"{run_dir.name}.incomplete"))
        run_dir.rename(aside)
        log(
            f"[benchmark] {run_name(method, seed)}: no checkpoint in {run_dir}; moved to {aside}, restarting"
        )
    else:
        log(f"[benchmark] {run_name(method, seed)}: training in {run_dir}")
    started = time.perf_counter()
    record = train_fn(cfg, resume)
    result = result_from_record(method, seed, run_dir, record)
    result.seconds = time.perf_counter() - started  # (after a resume: this session only)
    result.scores = cfg.train.eval_scores
    write_run_result(result, cfg)
    return result


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


# --------------------------------------------------------------------------- aggregation
def _recipe_config(method: str, data: str, data_name: str, recipes: str) -> str:
    """The config a method runs under: its published one for ``data_name`` when asked and
    there is one, else the benchmark's ``data`` config."""
    from mlcnc.methods import METHODS

    if recipes == "published":
        return METHODS.get(method).published_configs.get(data_name, data)
    return data


def _fill_training_size(configs: Sequence[Config], log: Callable[[str], None]) -> None:
    """Write the number of training images into the configs of the methods whose record
    needs it (DB's prior-logit shift), unless given, so each run's config alone rebuilds its
    method (also when its checkpoint is loaded)."""
    from mlcnc.methods import needs_num_samples

    sizes: dict[str, int] = {}
    for cfg in configs:
        if not needs_num_samples(cfg.method.name) or cfg.method.loss.get("num_samples"):
            continue
        key = json.dumps(config_to_dict(cfg.data), sort_keys=True)
        if key not in sizes:
            from mlcnc.data import build_splits

            sizes[key] = len(build_splits(cfg.data)["train"].labels)
            log(f"[benchmark] {sizes[key]} training images (method.loss.num_samples)")
        cfg.method.loss["num_samples"] = sizes[key]


# --------------------------------------------------------------------------- the runner
def run_benchmark(
    data: str,
    methods: Sequence[str],
    seeds: Sequence[int] = (0, 1, 2),
    output: str | Path | None = None,
    overrides: Sequence[str] = (),
    model: str = "regular",
    train_fn: TrainFn | None = None,
    log: Callable[[str], None] = print,
    command: str | None = None,
    plot: bool = True,
    recipes: str = "shared",
    launcher: str = "local",
    jobs: int = 1,
    slurm: Any = None,
) -> BenchmarkResult:
    """Train (or read back) every (method, seed), then write the table; see the module doc.

    ``data``: a shipped config name (``synthetic``, ``voc_lt``...) or a YAML file.
    ``overrides``: ``key=value`` shared by every run, or ``<method>:key=value`` for one.
    ``model``: ``regular`` or ``ema``, the model the table reports (both are stored).
    ``train_fn``: how a run is trained (default ``engine_train``; tests inject a fake).
    ``recipes``: ``shared`` (every method under the data config's recipe: the fair
    comparison) or ``published`` (a method with a published recipe for this benchmark,
    ``MethodRecord.published_configs``, runs under that config instead; the others keep
    the shared one; the table's footer lists which ran how).
    A failing run is logged and recorded in ``failures``; the others go on, and the table
    holds the seeds that finished (its Seeds column says which).
    ``launcher`` / ``jobs`` / ``slurm``: ``local`` with ``jobs=1`` trains the runs here, one
    after another; ``jobs > 1`` or ``slurm`` (with ``launch.fanout.SlurmOptions``) trains
    each run in a process or SLURM job of its own (``mlcnc.launch.fanout``).
    """
    methods, seeds = list(methods), [int(s) for s in seeds]
    _check_benchmark_arguments(methods, seeds, model, recipes, launcher, jobs)
    train_fn = train_fn or engine_train
    data_name = load_config(data).data.name
    method_data = {m: _recipe_config(m, data, data_name, recipes) for m in methods}
    output = Path(output) if output is not None else Path("runs") / f"benchmark-{Path(data).stem}"
    plan = _plan_runs(methods, seeds, method_data, output, overrides, log)
    output.mkdir(parents=True, exist_ok=True)
    write_json(
        output / "benchmark.json",
        {"data": data, "methods": methods, "seeds": seeds, "overrides": list(overrides),
         "model": model, "recipes": recipes, "run_configs": method_data, "command": command},
    )  # fmt: skip

    runs: list[RunResult] = []
    failures: dict[str, str] = {}
    footer = environment_note(command) + _recipes_note(data, method_data, recipes)
    if launcher != "local" or jobs > 1:  # each run in a process or SLURM job of its own
        from mlcnc.launch.fanout import fan_out

        def finished(result: RunResult) -> None:
            runs.append(result)
            write_tables(aggregate(runs, methods, model), output, model, seeds, footer, plot=False)

        failures.update(fan_out(plan, output, launcher, jobs, slurm, log, finished))
        plan = []  # trained out of process
    deferred = []
    for index, (method, seed, run_dir, cfg) in enumerate(plan, start=1):
        log(f"[benchmark] run {index}/{len(plan)}: {run_name(method, seed)}")
        if not claim_and_run(cfg, method, seed, run_dir, train_fn, log, runs, failures, wait=False):
            deferred.append((method, seed, run_dir, cfg))
            log(
                f"[benchmark] {run_name(method, seed)}: {run_dir} is in use by another process; "
                "its result is read once that process has finished it"
            )
            continue
        write_tables(aggregate(runs, methods, model), output, model, seeds, footer, plot=False)
    for method, seed, run_dir, cfg in deferred:  # runs another process was training
        claim_and_run(cfg, method, seed, run_dir, train_fn, log, runs, failures, wait=True)
        write_tables(aggregate(runs, methods, model), output, model, seeds, footer, plot=False)

    rows = aggregate(runs, methods, model)
    footer += _time_and_failures_note(runs, failures)
    files = write_tables(rows, output, model, seeds, footer, plot=plot)
    return BenchmarkResult(rows=rows, runs=runs, failures=failures, files=files)


RUN_CLAIM_POLL_SECONDS = 5.0
"""How often a benchmark waiting for a run another process holds looks again."""


def run_claim(run_dir: Path) -> Any:
    """The lock a benchmark process holds on one of its runs while it reads, resumes or
    trains it (``runs/.<name>.claim``, beside the run folder, whose own ``.lock`` the engine
    takes while training): two benchmarks into one ``--output`` never touch one run at once."""
    from mlcnc.engine.run_folder import RunLock

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return RunLock(run_dir.parent / f".{run_dir.name}.claim")


def claim_and_run(
    cfg: Config,
    method: str,
    seed: int,
    run_dir: Path,
    train_fn: TrainFn,
    log: Callable[[str], None],
    runs: list[RunResult],
    failures: dict[str, str],
    wait: bool,
) -> bool:
    """Claim and finish one run (``run_one``), recording its result or failure. Returns
    False, without waiting, when another process holds the run; ``wait``: wait for it."""
    from mlcnc.engine.run_folder import LOCK_FILE, RunInUseError, RunLock

    claim = run_claim(run_dir)
    while True:
        try:
            claim.acquire()
            if run_dir.is_dir():  # a process outside the benchmark may train in it
                engine_lock = RunLock(run_dir / LOCK_FILE)
                try:
                    engine_lock.acquire()
                except BaseException:
                    claim.release()
                    raise
                engine_lock.release()
            break
        except RunInUseError:
            if not wait:
                return False
            time.sleep(RUN_CLAIM_POLL_SECONDS)
    try:
        runs.append(run_one(cfg, method, seed, run_dir, train_fn, log))
    except (KeyboardInterrupt, ConfigError, DataError):
        raise  # the user's to fix, the same for every run: stop with one line
    except Exception as error:
        failures[run_name(method, seed)] = f"{type(error).__name__}: {error}"
        log(f"[benchmark] {run_name(method, seed)} FAILED:\n{traceback.format_exc()}")
    finally:
        claim.release()
    return True


def _check_benchmark_arguments(
    methods: list[str],
    seeds: list[int],
    model: str,
    recipes: str,
    launcher: str = "local",
    jobs: int = 1,
) -> None:
    """Refuse a bad model, no method or seed, duplicates, an unknown method or recipes."""
    from mlcnc.methods import METHODS

    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    if not methods or not seeds:
        raise ValueError("run_benchmark needs at least one method and one seed")
    for name, values in (("method", methods), ("seed", seeds)):
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"duplicate {name}s: {duplicates}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from: {', '.join(METHODS.names())}")
    if recipes not in ("shared", "published"):
        raise ValueError(f"recipes must be 'shared' or 'published', got {recipes!r}")
    from mlcnc.launch.fanout import LAUNCHERS

    if launcher not in LAUNCHERS or jobs < 1:
        raise ValueError(
            f"launcher must be one of {', '.join(LAUNCHERS)} and jobs at least 1, got "
            f"{launcher!r} and {jobs}"
        )


def _plan_runs(
    methods: list[str],
    seeds: list[int],
    method_data: dict[str, str],
    output: Path,
    overrides: Sequence[str],
    log: Callable[[str], None],
) -> list[tuple[str, int, Path, Any]]:
    """(method, seed, run folder, config) of every run, seed-major (a complete one-seed
    table comes first); every config is resolved, and so checked, before the first run."""
    shared, per_method = split_overrides(overrides, methods)
    plan = []
    for seed in seeds:
        for method in methods:
            run_dir = output / "runs" / run_name(method, seed)
            quiet = seed != seeds[0]  # say once per method what its configs leave out
            cfg = run_config(
                method_data[method], method, seed, run_dir, shared, per_method[method],
                _silent if quiet else log,
            )  # fmt: skip
            plan.append((method, seed, run_dir, cfg))
    _fill_training_size([cfg for *_, cfg in plan], log)
    return plan


def _recipes_note(data: str, method_data: dict[str, str], recipes: str) -> str:
    """The footer line saying which method ran under which recipe (``published`` only)."""
    if recipes != "published":
        return ""
    own = {m: c for m, c in method_data.items() if c != data}
    return (
        "Recipes: "
        + (
            "; ".join(f"{m} under its published recipe ({c})" for m, c in own.items())
            or "no method has a published recipe for this benchmark"
        )
        + f"; the others under {data}'s.\n"
    )


def _time_and_failures_note(runs: list[RunResult], failures: dict[str, str]) -> str:
    """The footer's training time and its list of failed runs."""
    note = ""
    timed = [r.seconds for r in runs if r.seconds is not None]
    if timed:
        note += (
            f"Training time: {sum(timed) / 60:.1f} min for {len(timed)} runs "
            f"({np.mean(timed):.0f} s per run on average).\n"
        )
    if failures:
        note += "\nFailed runs (left out of the table):\n" + "".join(
            f"- {name}: {message.splitlines()[0]}\n" for name, message in failures.items()
        )
    return note
