"""mlcnc.cli._paths.check_output: the one guard for every path a command writes."""

from __future__ import annotations

import pytest

from mlcnc.cli._paths import check_output, run_folder_of
from mlcnc.data.readers import DataError


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "config.yaml", "metrics.jsonl"):
        (run / name).write_text(name)
    return run


def test_inputs_are_refused_through_links_and_dots(tmp_path):
    data = tmp_path / "train.csv"
    data.write_text("image,labels\n")
    link = tmp_path / "link.json"
    link.symlink_to(data)
    for target in (data, link, tmp_path / "x" / ".." / "train.csv"):
        with pytest.raises(DataError, match="input of the command"):
            check_output(target, option="--json", inputs=[data])
    assert data.read_text() == "image,labels\n"


def test_a_run_folders_own_files_are_refused(run_dir, tmp_path):
    for target in (
        run_dir / "checkpoints" / "best.ckpt",
        run_dir / "checkpoints" / "new.ckpt",  # not there yet: still a checkpoint name
        run_dir / "config.yaml",
        run_dir / "metrics.jsonl",
        run_dir,
    ):
        with pytest.raises(DataError, match="nothing was written"):
            check_output(target, option="--out", runs=[run_dir])
    with pytest.raises(DataError, match="run's checkpoints"):
        check_output(run_dir / "checkpoints", option="--out", runs=[run_dir], folder=True)
    # beside the run's files, a new file is fine (export's default: RUN/checkpoints/best.pt)
    assert check_output(run_dir / "checkpoints" / "best.pt", option="--out", runs=[run_dir])
    assert check_output(run_dir / "inspect-test", option="--out", runs=[run_dir], folder=True)


def test_folders_files_and_overwrite(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(DataError, match="an existing folder"):
        check_output(tmp_path / "dir", option="--json")
    with pytest.raises(DataError, match="an existing file"):
        check_output(tmp_path / "file", option="--output", folder=True)
    with pytest.raises(DataError, match="is a file, not a folder"):
        check_output(tmp_path / "file" / "x.json", option="--json")
    with pytest.raises(DataError, match="pass --overwrite"):
        check_output(tmp_path / "file", option="--out", overwrite=False)
    assert check_output(tmp_path / "file", option="--out", overwrite=True)
    with pytest.raises(DataError, match="pass --overwrite"):  # never replaced silently
        check_output(tmp_path / "file", option="--output")
    assert check_output(tmp_path / "new", option="--output") == (tmp_path / "new").resolve()
    assert check_output(None, option="--json") is None


def test_run_folder_of(run_dir, tmp_path):
    assert run_folder_of(run_dir) == run_dir.resolve()
    assert run_folder_of(run_dir / "checkpoints" / "last.ckpt") == run_dir.resolve()
    assert run_folder_of(tmp_path / "loose.ckpt") is None
