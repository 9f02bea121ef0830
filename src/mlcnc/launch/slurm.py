"""``mlcnc train`` in a SLURM job: which run folder a (re)started job continues.

Under ``srun`` every task runs the same ``mlcnc train`` command; Lightning Fabric reads the
SLURM variables (rank, world size, master address) and joins the job (``train.devices`` x
``train.num_nodes`` must equal the tasks SLURM started). What this module adds is the
requeue rule, so that a job SLURM preempts and requeues continues from its ``last.ckpt``:

- ``--resume auto``: continue the run in ``--output`` when that folder holds one (its
  config must be the same, as for any ``--resume``; the engine's ``engine.resume`` checks
  it), start a new run there when it holds none.
- no ``--resume`` at all in a requeued job (``SLURM_RESTART_COUNT`` > 0): the same as
  ``--resume auto``, so an sbatch script written without it still continues.

Every task decides before the process group is set up, and rank 0 writes the folder only
after every task joined it, so all tasks decide the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

AUTO = "auto"


def restart_count(environ: dict[str, str] | None = None) -> int:
    """How many times SLURM restarted (requeued) this job; 0 outside SLURM."""
    value = (os.environ if environ is None else environ).get("SLURM_RESTART_COUNT", "")
    try:
        return int(value)
    except ValueError:
        return 0


def holds_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run to continue (a checkpoint or a config.yaml)."""
    from mlcnc.engine.checkpoint import CHECKPOINT_DIR, LAST

    folder = Path(folder)
    return (folder / CHECKPOINT_DIR / LAST).is_file() or (folder / "config.yaml").is_file()


def resolve_resume(
    resume: str | None, output: str | Path | None, environ: dict[str, str] | None = None
) -> str | None:
    """What ``--resume`` means for this process: ``auto`` (or a requeued job without
    ``--resume``) becomes ``output`` when it holds a run, else None (a new run)."""
    requeued = resume is None and restart_count(environ) > 0
    if resume != AUTO and not requeued:
        return resume
    if output is None:
        if requeued:
            return None
        raise ValueError(
            "--resume auto needs --output DIR: the folder the run continues in, or starts in "
            "when it holds no run"
        )
    return str(output) if holds_run(output) else None
