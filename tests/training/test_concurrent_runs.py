"""Two runs with one run_name at once: the second is refused while the first is alive, and a killed run frees its
folder at once (issue "Reliability II"; concurrent runs sharing one data_dir: tests/data/test_shared_data_dir.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.smoke import REPO, train_cli, train_command

from spam_lightning.training.runs import lock_dir, unlock_dir

IN_USE = "is in use by another run that is still running"


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under folder (the folder too) with its size and mtime: a file or temp file created, changed or
    removed shows (a directory's mtime changes when an entry is added or removed)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in [folder, *sorted(folder.rglob("*"))]}


def _wait_for(ready: Path, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            pytest.fail(
                f"the first run ended ({process.returncode}) before holding its folder:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the first run did not reach its step in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.mark.slow
def test_a_live_run_holds_its_folder_and_a_killed_one_frees_it(
    tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    ready = tmp_path / "ready"
    short = ("trainer.max_epochs=1", "trainer.limit_train_batches=8", "checkpoint_every_n_steps=2")
    hold = ("+callbacks.hold._target_=killers.HoldAtStep", "+callbacks.hold.step=3", f"+callbacks.hold.ready={ready}")
    command, env = train_command(tmp_path, *short, *hold, sms_zip=sms_zip, tokenizer_file=tokenizer_file)
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(ready, first, log)
        run_dir = tmp_path / "runs" / "r"
        before = _snapshot(run_dir)
        # A new run and a resume of the live run: each refused, nothing written.
        for extra in ((), ("resume=true",)):
            second = train_cli(tmp_path, *short, *extra, sms_zip=sms_zip, tokenizer_file=tokenizer_file)
            assert second.returncode == 1, second.stderr[-2000:]
            last_line = second.stderr.strip().splitlines()[-1]
            assert last_line.startswith(f"error: {run_dir} {IN_USE}"), last_line
            assert _snapshot(run_dir) == before, extra
    finally:
        first.kill()  # as a crash would: no clean-up code runs
        first.wait()
    # The kernel dropped the dead run's lock: it resumes from the step-2 checkpoint and finishes.
    resumed = train_cli(tmp_path, *short, "resume=true", sms_zip=sms_zip, tokenizer_file=tokenizer_file)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr


HOLDER = """
import sys, time
from pathlib import Path
from spam_lightning.training.runs import lock_dir
lock_dir(Path(sys.argv[1]), "sweep")
print("locked", flush=True)
time.sleep(60)
"""


def test_a_sweep_folder_is_locked_the_same_way(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(sweep)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=f"{sweep} is in use by another sweep that is still running"):
            lock_dir(sweep, "sweep")
    finally:
        holder.kill()
        holder.wait()
    lock_dir(sweep, "sweep")  # free once the holder is gone
    lock_dir(sweep, "sweep")  # this process already holds it: a second run in the same process may go on
    unlock_dir(sweep)
