"""``mlcnc benchmark`` fanned out: each (method, seed) run in its own process or SLURM job.

``--launcher local --jobs 1`` (the default) trains the runs one after another in the
benchmark's process (``mlcnc.benchmark``). Otherwise every run that has no ``result.json``
yet is trained by ``run_job`` in a process of its own:

- ``--jobs N`` (local): N at a time, each pinned to its slot: a CPU affinity mask of
  cores / N cores (which ``train.num_threads=auto`` reads) and, with at least N CUDA
  devices, ``CUDA_VISIBLE_DEVICES`` set to its share of them;
- ``--launcher slurm``: one submitit job array, one task per run (partition, time, GPUs,
  CPUs and memory from ``SlurmOptions``); submitit's files and the logs under
  ``OUTPUT/slurm/``.

Every run writes ``runs/<method>-seed<s>/result.json`` (``benchmark.run_one``, the serial
path's own code), which is what the benchmark reads back: the partial table is rewritten
whenever a run finishes, the full one when all did. Rerunning the same command reads the
finished runs back and trains (submits) only the missing or failed ones; a failed run is
reported with its log file. Each run seeds itself from its config, so a fanned-out
benchmark gives the serial one's numbers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAUNCHERS = ("local", "slurm")
LOG_DIR = "logs"
SLURM_DIR = "slurm"


@dataclass
class SlurmOptions:
    """The resources of each run's job (``mlcnc benchmark --slurm-*``)."""

    partition: str | None = None
    time_min: int = 60
    gpus: int = 0  # per run (GPUs per node; one task per run)
    cpus: int = 1  # per run
    mem_gb: float | None = None
    parallel: int | None = None  # at most this many runs of the array at once
    poll_s: float = 1.0


def run_spec(method: str, seed: int, run_dir: Path, cfg: Any) -> dict[str, Any]:
    from mlcnc.config import config_to_dict

    return {"method": method, "seed": seed, "run_dir": str(run_dir), "config": config_to_dict(cfg)}


def run_job(spec: dict[str, Any]) -> str:
    """Train one run (or read it back, or resume it) in this process; returns the path of
    its result.json. What each ``--jobs`` process and each SLURM task runs."""
    from mlcnc.benchmark import RESULT_FILE, claim_and_run, engine_train
    from mlcnc.config import config_from_dict

    cfg = config_from_dict(spec["config"])
    run_dir = Path(spec["run_dir"])
    # The run's claim, as the serial path takes it: another benchmark into the same output
    # that holds this run is waited for, never moved aside. A failure is logged (the run's
    # log) and leaves no result.json, which is how fan_out sees it.
    claim_and_run(
        cfg, spec["method"], int(spec["seed"]), run_dir, engine_train, print, [], {}, wait=True
    )
    return str(run_dir / RESULT_FILE)


Finished = Callable[[Any], None]  # called with each RunResult as it comes in


def fan_out(
    plan: Sequence[tuple[str, int, Path, Any]],
    output: Path,
    launcher: str,
    jobs: int,
    slurm: SlurmOptions | None,
    log: Callable[[str], None],
    finished: Finished,
) -> dict[str, str]:
    """Train every run of ``plan`` without a result.json, out of process; ``finished`` gets
    each result (read back or new). Returns the failures: run name -> message with log."""
    from mlcnc.benchmark import RESULT_FILE, read_run_result, run_name

    todo = []
    for method, seed, run_dir, cfg in plan:
        if (run_dir / RESULT_FILE).is_file():
            log(f"[benchmark] {run_name(method, seed)}: finished earlier, read back")
            finished(read_run_result(run_dir / RESULT_FILE, cfg))
        else:
            todo.append((method, seed, run_dir, cfg))
    if not todo:
        return {}

    def done(method: str, seed: int, run_dir: Path, cfg: Any, log_path: Path | None) -> str | None:
        """Read a run back once its process ended; a message when it failed."""
        path = run_dir / RESULT_FILE
        if path.is_file():
            finished(read_run_result(path, cfg))
            log(f"[benchmark] {run_name(method, seed)}: finished")
            return None
        return f"no {RESULT_FILE} written; log: {log_path}"

    if launcher == "slurm":
        return _slurm(todo, output, slurm or SlurmOptions(), log, done)
    return _local(todo, output, jobs, log, done)


# --------------------------------------------------------------------------- --jobs N
def slots(jobs: int) -> list[dict[str, Any]]:
    """The cores (and CUDA devices, with at least ``jobs`` of them) of each of ``jobs``
    slots: the process's cores split into ``jobs`` groups (a core may serve two slots when
    there are fewer cores than slots)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    gpus = _cuda_devices()
    out = []
    for i in range(jobs):
        mine = cores[i::jobs] or ([cores[i % len(cores)]] if cores else [])
        slot: dict[str, Any] = {"cores": mine}
        if len(gpus) >= jobs:
            slot["cuda"] = gpus[i::jobs]
        out.append(slot)
    return out


def _cuda_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def _pin(cores: set[int]) -> Callable[[], None] | None:
    """The child's pinning to ``cores`` (run between fork and exec)."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, cores)


def _local(todo, output: Path, jobs: int, log, done) -> dict[str, str]:
    from mlcnc.benchmark import run_name
    from mlcnc.io import write_json

    logs = output / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    free = slots(max(1, jobs))
    waiting = list(todo)
    running: list[tuple[subprocess.Popen, dict, tuple, Path]] = []
    failures: dict[str, str] = {}
    while waiting or running:
        while waiting and free:
            item = waiting.pop(0)
            method, seed = item[0], item[1]
            slot = free.pop(0)
            name = run_name(method, seed)
            spec_path = write_json(logs / f"{name}.spec.json", run_spec(*item))
            log_path = logs / f"{name}.log"
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, len(slot["cores"])))}
            if "cuda" in slot:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(slot["cuda"])
            cores = set(slot["cores"])
            with open(log_path, "w") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mlcnc.launch.fanout", str(spec_path)],
                    stdout=out, stderr=subprocess.STDOUT, env=env,
                    preexec_fn=_pin(cores),
                )  # fmt: skip
            where = f"cores {sorted(cores)}" + (
                f", CUDA {','.join(slot['cuda'])}" if "cuda" in slot else ""
            )
            log(f"[benchmark] {name}: started (pid {proc.pid}, {where}; log {log_path})")
            running.append((proc, slot, item, log_path))
        time.sleep(0.2)
        for entry in list(running):
            proc, slot, item, log_path = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            free.append(slot)
            message = done(*item, log_path)
            if message is not None:
                name = run_name(item[0], item[1])
                failures[name] = f"exit status {proc.returncode}, {message}"
                log(f"[benchmark] {name} FAILED: {failures[name]}")
    return failures


# --------------------------------------------------------------------------- SLURM
def _slurm(todo, output: Path, options: SlurmOptions, log, done) -> dict[str, str]:
    try:
        import submitit
    except ImportError:
        raise ImportError(
            "--launcher slurm needs submitit: pip install 'mlcnc[slurm]' (submitit==1.5.4)"
        ) from None
    from mlcnc.benchmark import run_name

    # Without an accounting database sacct fails and submitit warns at every poll.
    logging.getLogger("submitit").setLevel(logging.ERROR)
    folder = output / SLURM_DIR
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    params: dict[str, Any] = {
        "timeout_min": options.time_min,
        "cpus_per_task": options.cpus,
        "tasks_per_node": 1,
        "nodes": 1,
        "name": f"mlcnc-benchmark-{output.name}",
    }
    if options.gpus:
        params["gpus_per_node"] = options.gpus
    if options.mem_gb is not None:
        params["mem_gb"] = options.mem_gb
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.parallel:
        params["slurm_array_parallelism"] = options.parallel
    executor.update_parameters(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        submitted = executor.map_array(run_job, [run_spec(*item) for item in todo])
    ids = {run_name(m, s): job.job_id for job, (m, s, *_) in zip(submitted, todo, strict=True)}
    log(
        f"[benchmark] submitted {len(submitted)} runs as job array {submitted[0].job_id.split('_')[0]}"
    )
    from mlcnc.io import write_json

    write_json(folder / "jobs.json", ids)
    failures: dict[str, str] = {}
    pending = list(zip(submitted, todo, strict=True))
    while pending:
        time.sleep(options.poll_s)
        for entry in list(pending):
            job, item = entry
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                over = job.done() or (item[2] / "result.json").is_file()
            if not over:
                continue
            pending.remove(entry)
            message = done(*item, job.paths.stdout)
            if message is not None:
                name = run_name(item[0], item[1])
                error = _job_error(job)
                failures[name] = f"job {job.job_id}: {error}; {message} (stderr {job.paths.stderr})"
                log(f"[benchmark] {name} FAILED: {failures[name]}")
    return failures


def _job_error(job: Any) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            error = job.exception()
    except Exception as exc:  # the result file is missing: killed, timed out, cancelled
        error = exc
    if error is None:
        return "ended without an error"
    return str(error).strip().splitlines()[-1][:300] if str(error).strip() else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """``python -m mlcnc.launch.fanout SPEC.json``: one ``--jobs`` run."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    run_job(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
