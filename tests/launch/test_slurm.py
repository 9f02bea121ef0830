"""--resume auto and a requeued SLURM job: which folder a (re)started job continues."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcnc.launch.slurm import resolve_resume


def test_resume_auto_continues_a_folder_with_a_run_and_starts_an_empty_one(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert resolve_resume("auto", out, {}) is None  # no folder: a new run
    out.mkdir()
    assert resolve_resume("auto", out, {}) is None  # empty: a new run
    (out / "config.yaml").write_text("{}\n")
    assert resolve_resume("auto", out, {}) == str(out)
    assert resolve_resume(str(tmp_path / "x"), out, {}) == str(tmp_path / "x")  # explicit
    with pytest.raises(ValueError, match="--resume auto needs --output"):
        resolve_resume("auto", None, {})


def test_a_requeued_job_resumes_without_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_resume(None, out, {}) is None  # a first start: as asked
    assert resolve_resume(None, out, {"SLURM_RESTART_COUNT": "0"}) is None
    assert resolve_resume(None, out, {"SLURM_RESTART_COUNT": "1"}) == str(out)
    assert resolve_resume(None, None, {"SLURM_RESTART_COUNT": "2"}) is None
