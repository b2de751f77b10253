"""
Where checkpoints cannot be written: a disk that fills up while a checkpoint is written stops the run in one line
(the file, the bytes it needed, the free space), removes the partial file and keeps the previous checkpoint, and
--resume finishes on a disk with space; an OUTPUT_DIR that cannot be created or written stops before any process
starts.
"""
import errno
import os
import shutil
import subprocess

import pytest
import torch

import warm_start
from detectron2.modeling import build_model

from conftest import DEMO_CONFIG, SMALL_OPTS, small_cfg, stops_before_any_process
from efl.engine import EFLCheckpointer
from efl.engine.checkpoint import DiskFullError
from interruptions import (
    ENV,
    assert_same_end,
    run_to_the_end,
    yacs_command,
)


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a tmpfs of 120 MB (one training checkpoint of the test model is about 90 MB); skips where
    mounting is not allowed."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120m", "tmpfs", str(folder)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_stops_the_run_in_one_line_and_resume_finishes_elsewhere(uninterrupted, small_disk, tmp_path):
    """The first checkpoint fits, the second does not: one line naming the file, the bytes it needed and the free
    space; the partial file removed; the first checkpoint and last_checkpoint untouched; moved to a disk with space,
    --resume ends as the uninterrupted run."""
    reference, _ = uninterrupted("yacs", 1)
    out = small_disk / "run"
    stopped = warm_start.run(yacs_command(out, 1), ENV)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    (line,) = [line for line in stopped.stderr.splitlines() if line.startswith("train_net.py: error: ")]
    assert f"no space left to write {out}/model_0000003.pth: it needs " in line and " MB free;" in line
    assert sorted(p.name for p in out.glob("model_*")) == ["model_0000001.pth"]
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"

    moved = tmp_path / "moved"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("run.lock"))
    run_to_the_end(yacs_command(moved, 1, "--resume"))
    assert_same_end(moved, reference)


def test_a_full_disk_without_a_tmpfs(tmp_path, monkeypatch):
    """The same checks where no tmpfs can be mounted: the writer fails with ENOSPC half-way."""
    model = build_model(small_cfg())
    checkpointer = EFLCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_0000001")

    save = torch.save

    def full(obj, f, *args, **kwargs):
        if not hasattr(f, "name"):  # not a file on disk: what the checkpointer counts the bytes needed with
            return save(obj, f, *args, **kwargs)
        f.write(b"the first bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError, match=rf"no space left to write {tmp_path}/model_0000003.pth: it needs \d"):
        checkpointer.save("model_0000003")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_an_output_dir_that_cannot_be_written_stops_before_any_process_starts(tmp_path):
    (tmp_path / "a_file").write_text("")
    message = stops_before_any_process("--config-file", DEMO_CONFIG, *SMALL_OPTS, "OUTPUT_DIR", tmp_path / "a_file" / "out")
    assert message == (
        f"OUTPUT_DIR {tmp_path}/a_file/out cannot be created or written: {tmp_path}/a_file is not a folder; set "
        "OUTPUT_DIR to a writable folder"
    )
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(read_only)]).returncode == 0:
        try:
            message = stops_before_any_process("--config-file", DEMO_CONFIG, *SMALL_OPTS, "OUTPUT_DIR", read_only / "out")
        finally:
            subprocess.run(["umount", str(read_only)], check=True)
        assert f"{read_only} is not writable (a read-only file system)" in message
    if os.geteuid() != 0:  # root writes whatever the permissions say
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        message = stops_before_any_process("--config-file", DEMO_CONFIG, *SMALL_OPTS, "OUTPUT_DIR", locked / "out")
        assert f"{locked} is not writable" in message
