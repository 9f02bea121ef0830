"""The local SLURM cluster for the tests marked ``slurm`` (scripts/slurm_cluster.sh).

One cluster per test session, in the session's temporary folder, on free ports; stopped
at the end by the PIDs the script started. Skipped (with the reason) only where SLURM
cannot be installed (not root, no apt-get); under CI (``CI=true``) that is a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "slurm_cluster.sh"
CANNOT_INSTALL = 3  # the script's exit status when the packages cannot be installed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment (os.environ plus SLURM_CONF) under which srun/sbatch reach the cluster."""
    folder = tmp_path_factory.mktemp("slurm")
    env = {
        **os.environ,
        "MLCNC_SLURMCTLD_PORT": str(_free_port()),
        "MLCNC_SLURMD_PORT": str(_free_port()),
    }
    done = subprocess.run(
        ["bash", str(SCRIPT), "start", str(folder)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode == CANNOT_INSTALL:
        reason = f"no SLURM here and it cannot be installed: {done.stderr.strip()[-300:]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the SLURM tests; {reason}")
        pytest.skip(reason)
    assert done.returncode == 0, done.stdout + done.stderr
    cluster = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    for key in [k for k in cluster if k.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        if key != "SLURM_CONF":
            del cluster[key]  # the tests are not themselves a job step
    try:
        yield cluster
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], timeout=60, check=False)
