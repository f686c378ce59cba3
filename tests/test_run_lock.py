"""The run folder's lock (iiae.runs.run_folder.RunLock, a filelock.FileLock): one process per run folder, a
one-line error naming the folder for any other, no lock file left behind, nothing kept by a killed holder."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from iiae.errors import OutputError
from iiae.run_files import LOCK
from iiae.runs.run_folder import RunLock

# A second process that holds the OS lock on the run's lock file until it is killed; it imports only filelock.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from filelock import FileLock
    lock = FileLock(sys.argv[1])
    lock.acquire(timeout=10)
    print("held", flush=True)
    time.sleep(60)
    """
)


def test_a_folder_locked_by_another_process_is_refused_until_that_process_dies(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError) as refused:
            RunLock(run, new_run=False).__enter__()
        message = str(refused.value)
        assert "\n" not in message and str(run) in message and "in use by another iiae run" in message
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own; the OS drops its lock
        holder.wait()
    assert (run / LOCK).exists()  # the killed holder's file stays, its lock does not
    with RunLock(run, new_run=False):
        pass
    assert not (run / LOCK).exists()


def test_a_second_lock_in_the_same_process_is_refused_and_the_lock_is_reusable_after_release(tmp_path):
    run = tmp_path / "run"
    with RunLock(run, new_run=True):
        assert [path.name for path in run.iterdir()] == [LOCK]
        with pytest.raises(OutputError, match="in use by another iiae run"):
            RunLock(run, new_run=False).__enter__()
        (run / "config.yaml").write_text("name: x\n")
    assert sorted(path.name for path in run.iterdir()) == ["config.yaml"]  # released and removed
    with pytest.raises(OutputError, match="is not empty"):  # a new run refuses a folder with files
        RunLock(run, new_run=True).__enter__()
    assert sorted(path.name for path in run.iterdir()) == ["config.yaml"]  # and released what it took
    with RunLock(run, new_run=False):  # resuming it is fine
        pass


def test_a_folder_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=f"cannot lock run folder {blocker / 'run'}"):
        RunLock(blocker / "run", new_run=True).__enter__()
