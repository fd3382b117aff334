"""Runs that share one data.data_dir: each seed's splits in their own folder, read once and checked as read.

A run evaluates on exactly the splits it trained with (and records their hashes), or stops with a clear error; a run
with another seed in the same data_dir never touches its files; a data_dir whose files are current is only read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers.smoke import HELPERS, REPO

from spam_lightning.data.modules import SmsSpamDataModule
from spam_lightning.data.sms_spam import SPLITS, TSV_NAME, ZIP_NAME, splits_dir
from spam_lightning.errors import DataError
from spam_lightning.files import file_sha256, write_if_changed
from spam_lightning.inference.checkpoint import RECORD_KEY, read_checkpoint

SPLIT_FILES = [f"{name}.csv" for name in SPLITS]


def datamodule(
    data_dir: Path, seed: int, tokenizer_file: str, source: Path | None = None, **kwargs
) -> SmsSpamDataModule:
    return SmsSpamDataModule(
        source=None if source is None else str(source),
        data_dir=str(data_dir),
        tokenizer_file=tokenizer_file,
        seed=seed,
        **kwargs,
    )


def hashes(folder: Path) -> dict[str, str]:
    return {name: file_sha256(folder / name) for name in SPLIT_FILES}


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime_ns) of the folder itself and everything in it: a file written again (a new inode, or a
    new mtime) or a temporary file made and removed (the folder's mtime) shows."""
    paths = [folder, *sorted(folder.rglob("*"))]
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in paths}


def age(folder: Path) -> None:
    """Set every mtime in `folder` far in the past, so any later write changes it (whatever the clock's tick)."""
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))


def same_data(a: SmsSpamDataModule, b: SmsSpamDataModule, split: str) -> bool:
    return a.datasets[split].ids == b.datasets[split].ids and a.datasets[split].labels == b.datasets[split].labels


# -- in-process: two seeds, one data_dir -------------------------------------------------------------------------


def test_a_run_with_another_seed_leaves_a_runs_splits_alone(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> None:
    shared = tmp_path / "shared"
    a = datamodule(shared, 1, tokenizer_file, sms_zip)
    a.prepare_data()
    a.setup("fit")
    age(splits_dir(shared, 1))
    a_files = snapshot(splits_dir(shared, 1))
    a_hashes = hashes(splits_dir(shared, 1))

    b = datamodule(shared, 2, tokenizer_file, sms_zip)
    b.prepare_data()  # the second run starts while the first trains
    b.setup("fit")
    a.setup("test")

    solo = datamodule(tmp_path / "solo", 1, tokenizer_file, sms_zip)
    solo.prepare_data()
    solo.setup("fit")
    solo.setup("test")
    assert a.state_dict()["splits_sha256"] == solo.state_dict()["splits_sha256"] == a_hashes
    assert a.record()["splits_sha256"] == a_hashes
    assert all(same_data(a, solo, split) for split in SPLITS)
    assert snapshot(splits_dir(shared, 1)) == a_files  # B did not write, rename or remove anything there
    assert b.state_dict()["splits_sha256"] == hashes(splits_dir(shared, 2)) != a_hashes
    assert sorted(p.name for p in shared.iterdir()) == [TSV_NAME, "seed-1", "seed-2"]


def test_another_source_variant_in_the_same_folder_stops_the_run(
    tmp_path: Path, sms_zip: Path, sms_tsv: Path, tokenizer_file: str
) -> None:
    """What per-seed folders do not separate: two variants of the data with one seed in one data_dir. The run whose
    splits were replaced stops with a clear error instead of training or evaluating on the other's."""
    variant = tmp_path / "variant.tsv"
    variant.write_bytes(b"".join(sms_tsv.read_bytes().splitlines(keepends=True)[10:]))
    shared = tmp_path / "shared"
    a = datamodule(shared, 1, tokenizer_file, sms_zip)
    a.prepare_data()
    datamodule(shared, 1, tokenizer_file, variant, verify_checksum=False).prepare_data()
    with pytest.raises(
        DataError, match=r"splits\.json changed since this run prepared the splits .* own data\.data_dir"
    ):
        a.setup("fit")
    # A process that did not prepare the data (another DDP rank) knows the splits are not UCI's.
    with pytest.raises(DataError, match=r"splits\.json: these splits were made from a file with sha256 .* not UCI's"):
        datamodule(shared, 1, tokenizer_file).setup("fit")


# -- read once, checked as read ---------------------------------------------------------------------------------


def test_split_edited_before_it_is_read_is_an_error(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> None:
    dm = datamodule(tmp_path, 1, tokenizer_file, sms_zip)
    dm.prepare_data()
    test_csv = splits_dir(tmp_path, 1) / "test.csv"
    with test_csv.open("a") as f:
        f.write("0,an extra message\n")
    with pytest.raises(DataError, match=r"seed-1/test\.csv changed since the splits were made") as err:
        dm.setup("fit")  # before training: all three splits are read (and checked) at the first setup
    assert "edited, or written by another run" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"test\.csv changed since the splits were made"):
        datamodule(tmp_path, 1, tokenizer_file).setup("test")  # a process that only reads (another DDP rank)
    again = datamodule(tmp_path, 1, tokenizer_file, sms_zip)
    again.prepare_data()  # rebuilds the edited file
    again.setup("test")
    assert len(again.datasets["test"]) == 300


def test_split_edited_after_it_was_read_changes_nothing_in_the_run(
    tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    dm = datamodule(tmp_path, 1, tokenizer_file, sms_zip)
    dm.prepare_data()
    dm.setup("fit")
    recorded = dm.state_dict()["splits_sha256"]
    folder = splits_dir(tmp_path, 1)
    solo = datamodule(tmp_path / "solo", 1, tokenizer_file, sms_zip)
    solo.prepare_data()
    solo.setup()
    for name in SPLIT_FILES:  # another seed's splits, or an edit
        shutil.copy(splits_dir(tmp_path / "solo", 1) / "train.csv", folder / name)
    (folder / "splits.json").write_text("{}")
    dm.setup("test")
    assert dm.state_dict()["splits_sha256"] == recorded == dm.record()["splits_sha256"]
    assert all(same_data(dm, solo, split) for split in SPLITS)
    assert len(dm.read_split("test")) == 300


def test_write_if_changed(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    assert write_if_changed(path, b"abc") is True and path.read_bytes() == b"abc"
    age(tmp_path)
    before = snapshot(tmp_path)
    assert write_if_changed(path, b"abc") is False
    assert snapshot(tmp_path) == before  # not even a temporary file
    assert write_if_changed(path, b"abd") is True and path.read_bytes() == b"abd"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


# -- a data_dir whose files are current is only read -----------------------------------------------------------------


@pytest.fixture
def current_data_dir(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> Path:
    """data_dir with the zip, the extracted file and the seed-123 splits, all current."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(sms_zip, data_dir / ZIP_NAME)
    datamodule(data_dir, 123, tokenizer_file).prepare_data()
    assert sorted(p.name for p in data_dir.iterdir()) == sorted([TSV_NAME, ZIP_NAME, "seed-123"])
    return data_dir


@pytest.mark.parametrize("source", ["zip", "tsv", None])
def test_current_data_dir_is_not_written(
    current_data_dir: Path, source: str | None, sms_zip: Path, sms_tsv: Path, tokenizer_file: str
) -> None:
    age(current_data_dir)
    before = snapshot(current_data_dir)
    src = {"zip": sms_zip, "tsv": sms_tsv, None: None}[source]
    dm = datamodule(current_data_dir, 123, tokenizer_file, src)
    dm.prepare_data()
    dm.setup()
    dm.prepare_data()  # as Lightning calls it again in fit
    assert len(dm.datasets["test"]) == 300
    assert snapshot(current_data_dir) == before


READ_ONLY_RUN = """
import sys
from pathlib import Path
print("started", flush=True)
from spam_lightning.data.modules import SmsSpamDataModule
data_dir, tokenizer_file, *sources = sys.argv[1:]
try:
    (Path(data_dir) / "seed-123" / ".probe").write_bytes(b"")
    sys.exit("the data_dir is writable: this test would prove nothing")
except PermissionError:
    pass
for source in sources:
    dm = SmsSpamDataModule(source=source or None, data_dir=data_dir, tokenizer_file=tokenizer_file, seed=123)
    dm.prepare_data()
    dm.setup()
    assert len(dm.datasets["test"]) == 300
print("ok")
"""


@pytest.mark.slow
def test_read_only_data_dir_as_an_unprivileged_user(
    current_data_dir: Path, sms_zip: Path, tokenizer_file: str, tmp_path: Path
) -> None:
    """The real thing where it can run: a data_dir nobody may write, used by a process that is not root (user
    nobody, through setpriv); skipped where that cannot run (not root, no setpriv, a Python nobody cannot run)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a process as user nobody")
    home = Path(tempfile.mkdtemp(prefix="spam_lightning_nobody_"))  # tmp_path's parents are private to root
    try:
        home.chmod(0o777)
        data_dir = home / "data"
        shutil.copytree(current_data_dir, data_dir)
        for path in [data_dir, *data_dir.rglob("*")]:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        before = snapshot(data_dir)
        env = {**os.environ, "HOME": str(home), "SPAM_LIGHTNING_CACHE": str(home / "cache"), "MPLCONFIGDIR": str(home)}
        args = [str(data_dir), tokenizer_file, str(sms_zip), ""]  # data.source=<zip>, then data.source=None
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        try:
            result = subprocess.run(
                [*nobody, sys.executable, "-c", READ_ONLY_RUN, *args],
                cwd="/",
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except OSError as err:
            pytest.skip(f"cannot run setpriv: {err}")
        if "started" not in result.stdout or "ModuleNotFoundError" in result.stderr:
            pytest.skip(f"user nobody cannot run this Python (venv): {result.stderr[-500:]}")
        assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
        assert snapshot(data_dir) == before
    finally:
        for path in [home, *home.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(home)


# -- end to end: two training runs at once, one data_dir ---------------------------------------------------------


@pytest.mark.slow
def test_concurrent_runs_with_two_seeds_record_their_own_splits(
    tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    data_dir = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(HELPERS), "PYTHONUNBUFFERED": "1"}

    def start(seed: int) -> subprocess.Popen:
        command = [
            sys.executable,
            "train.py",
            "experiment=smoke",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=5",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "test_after_fit=true",
            "report=false",
            f"runs_dir={tmp_path / 'runs'}",
            f"run_name=seed{seed}",
            f"data.source={sms_zip}",
            f"data.tokenizer_file={tokenizer_file}",
            f"data.data_dir={data_dir}",
            f"data.seed={seed}",
        ]
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    runs = {seed: start(seed) for seed in (1, 2)}  # both started before either is waited for
    outputs = {seed: run.communicate(timeout=600)[0] for seed, run in runs.items()}
    for seed, run in runs.items():
        assert run.returncode == 0, outputs[seed][-3000:]
    recorded = {}
    for seed in (1, 2):
        files = hashes(splits_dir(data_dir, seed))
        run_dir = tmp_path / "runs" / f"seed{seed}"
        metrics = json.loads((run_dir / "metrics.json").read_text())  # written after testing the best checkpoint
        checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
        assert {run_dir / "checkpoints" / "last.ckpt", Path(metrics["best_checkpoint"])} <= set(checkpoints)
        for ckpt_path in checkpoints:
            ckpt = read_checkpoint(ckpt_path)
            assert ckpt[RECORD_KEY]["data"]["seed"] == seed
            assert ckpt[RECORD_KEY]["data"]["splits_sha256"] == files, ckpt_path  # what evaluation checks
            assert ckpt["SmsSpamDataModule"]["splits_sha256"] == files, ckpt_path  # what resuming checks
        assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 300
        recorded[seed] = files
    assert recorded[1] != recorded[2]
    assert not [p for p in data_dir.rglob(".*")]  # no temporary file left
    digest = hashlib.sha256(b"".join((splits_dir(data_dir, 1) / f).read_bytes() for f in SPLIT_FILES)).hexdigest()
    solo = datamodule(tmp_path / "solo", 1, tokenizer_file, sms_zip)
    solo.prepare_data()
    assert digest == hashlib.sha256(b"".join((solo.splits_dir / f).read_bytes() for f in SPLIT_FILES)).hexdigest()
