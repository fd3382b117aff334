"""Training runs that must not end with wrong results or a misleading exit status (issue "Reliability II"): signals,
resumes with changed settings, configurations that train nothing, run names outside runs_dir, stale temporary
files, the precision that actually ran, non-finite losses and weights, a full disk, and one-line errors."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import torch
import yaml
from helpers.records import resave_checkpoint
from helpers.scripts import run_script
from helpers.smoke import smoke_cfg, train_cli
from omegaconf import OmegaConf

import spam_lightning.files as files
from spam_lightning.errors import CheckpointError, ConfigError, DivergedError
from spam_lightning.files import DiskFullError, atomic_write, disk_full_error
from spam_lightning.inference.checkpoint import read_checkpoint
from spam_lightning.training.run import run
from spam_lightning.training.runs import check_run_name


@pytest.fixture
def cfg_factory(tmp_path: Path, sms_zip: Path, tokenizer_file: str):
    def factory(*overrides: str):
        return smoke_cfg(
            tmp_path / "run", tmp_path / "data", sms_zip, tokenizer_file, "test_after_fit=false", *overrides
        )

    return factory


# -- configurations that would train nothing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=2000", "data.batch_size=2000 with data.drop_last=True gives no training batch from the 1045"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 trains nothing"),
        ("trainer.max_steps=0", "trainer.max_steps=0 trains nothing"),
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0 trains nothing"),
    ],
)
def test_a_run_that_would_train_nothing_is_refused(cfg_factory, tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run(cfg_factory(override))
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before the run wrote anything


# -- resuming with changed settings -------------------------------------------------------------------------------


def test_resume_with_changed_settings_is_refused_listing_them(cfg_factory, tmp_path: Path) -> None:
    run(cfg_factory("trainer.max_epochs=1", "trainer.limit_train_batches=5", "trainer.limit_val_batches=2"))
    checkpoints = tmp_path / "run" / "checkpoints"
    config_before = (tmp_path / "run" / "config.yaml").read_bytes()
    stale = checkpoints / ".last.ckpt.abc123.tmp"  # what a kill -9 during a checkpoint write leaves
    stale.write_bytes(b"half a checkpoint")

    changed = ("model.lr=5e-4", "data.batch_size=8", "model.weight_decay=0.0")
    with pytest.raises(ConfigError) as refused:
        run(cfg_factory("resume=true", "trainer.max_epochs=2", *changed))
    message = str(refused.value)
    for difference in (
        "model.lr=0.001 (this run: 0.0005)",
        "model.weight_decay=0.01 (this run: 0.0)",
        "data.batch_size=16 (this run: 8)",
    ):
        assert difference in message
    assert (tmp_path / "run" / "config.yaml").read_bytes() == config_before  # nothing of the run changed
    assert stale.exists()

    # Settings that may change on resume apply: train one more epoch, evaluate with another batch size.
    run(cfg_factory("resume=true", "trainer.max_epochs=2", "trainer.limit_train_batches=5", "data.eval_batch_size=7"))
    assert read_checkpoint(checkpoints / "last.ckpt")["epoch"] == 1
    assert not stale.exists()  # the interrupted write's temporary file is cleaned at start
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["eval_batch_size"] == 7


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every file's and folder's modification time (ns), and every file's bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
        for p in sorted([folder, *folder.rglob("*")])
    }


def test_a_refused_resume_leaves_the_run_as_it_was(
    tmp_path: Path, sms_zip: Path, tokenizer_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hydra writes a session's .hydra/ files and opens its log before the run's checks: a continuing session's are
    kept outside the run until they pass. A refused resume changes no file or folder of the run (bytes and times;
    train.log included) and leaves no staging folder; one that passes keeps the command line that started the run in
    .hydra/, adds its own in .hydra/resume-1/, and appends its log to train.log."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the staging folders of the train.py processes below
    (tmp_path / "tmp").mkdir()
    short = ("trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2")
    first = train_cli(tmp_path, *short, sms_zip=sms_zip, tokenizer_file=tokenizer_file)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "r"
    before, first_log = _snapshot(run_dir), (run_dir / "train.log").read_bytes()
    [best] = (run_dir / "checkpoints").glob("epoch*.ckpt")
    for refused, message in (
        (("resume=true", "model.lr=5e-4"), "was trained with model.lr=0.001 (this run: 0.0005)"),
        ((f"ckpt_path={best}",), "holds the model weights only"),
    ):
        done = train_cli(tmp_path, *short, *refused, sms_zip=sms_zip, tokenizer_file=tokenizer_file)
        assert done.returncode == 1 and message in done.stderr.strip().splitlines()[-1], done.stderr[-3000:]
        assert _snapshot(run_dir) == before, refused
        assert not list((tmp_path / "tmp").glob("spam_lightning-resume-*"))

    resumed = train_cli(
        tmp_path, *short, "trainer.max_epochs=2", "resume=true", sms_zip=sms_zip, tokenizer_file=tokenizer_file
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run_dir / ".hydra" / "overrides.yaml").read_bytes() == before[".hydra/overrides.yaml"][1]
    assert "- resume=true" in (run_dir / ".hydra" / "resume-1" / "overrides.yaml").read_text().splitlines()
    log = (run_dir / "train.log").read_bytes()
    assert log.startswith(first_log) and b"resuming from" in log[len(first_log) :]
    assert b"Trainer.fit` stopped: `max_epochs=2` reached" in log  # logged after the staged log joined train.log
    assert not list((tmp_path / "tmp").glob("spam_lightning-resume-*"))


# -- signals: interrupted is never success ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("killer", "status"),
    [
        (["+callbacks.killer._target_=killers.SignalAtStep", "+callbacks.killer.step=3"], 143),
        (
            [
                "+callbacks.killer._target_=killers.SignalAtStep",
                "+callbacks.killer.step=3",
                "+callbacks.killer.signal=SIGINT",
            ],
            130,
        ),
        (["+callbacks.killer._target_=killers.SignalInTest", "test_after_fit=true"], 143),
    ],
    ids=["SIGTERM in training", "Ctrl-C in training", "SIGTERM in the test phase"],
)
def test_an_interrupted_run_exits_non_zero_with_the_resume_hint(
    killer: list[str], status: int, tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    done = train_cli(
        tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=10", *killer, sms_zip=sms_zip,
        tokenizer_file=tokenizer_file,
    )  # fmt: skip
    assert done.returncode == status, done.stderr[-3000:]
    assert "continue with: python train.py resume=true run_name=r" in done.stdout + done.stderr
    assert not (tmp_path / "runs" / "r" / "metrics.json").exists()


# -- run names -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute_run", "a/../../b", " "])
def test_run_name_outside_runs_dir_is_refused(name: str) -> None:
    with pytest.raises(SystemExit) as refused:
        check_run_name(OmegaConf.create({"run_name": name}))
    assert str(refused.value).startswith(f"error: run_name={name!r} must be a folder name under runs_dir")
    check_run_name(OmegaConf.create({"run_name": "sweeps/lr_1e-4"}))  # a nested name inside runs_dir is fine


def test_run_name_refusal_writes_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "deep" / "runs"
    done = run_script("train.py", "experiment=smoke", f"runs_dir={runs}", "run_name=../../escaped")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: run_name='../../escaped' must be a folder name")
    assert not any(tmp_path.rglob("*.yaml")) and not (tmp_path / "escaped").exists()


# -- the precision that ran is the one recorded --------------------------------------------------------------------


def test_config_records_the_precision_that_ran(cfg_factory, tmp_path: Path) -> None:
    run(cfg_factory("trainer.precision=16-mixed", "trainer.max_epochs=1", "trainer.limit_train_batches=2"))
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["trainer"]["precision"] == "bf16-mixed"  # Lightning runs fp16 AMP as bf16 on a CPU


# -- unreadable checkpoints say what they are ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty (0 bytes): not a checkpoint"),
        (b"\x80\x02garbage" + bytes(range(256)) * 4, "not a checkpoint"),
        (b"PK\x03\x04 a broken zip", "cannot be read (truncated or not a checkpoint?)"),
    ],
    ids=["empty", "random bytes", "broken zip"],
)
def test_an_unreadable_checkpoint_says_what_it_is(content: bytes, message: str, tmp_path: Path) -> None:
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(message)) as refused:
        read_checkpoint(bad)
    assert "pickled objects" not in str(refused.value) and "\n" not in str(refused.value)


# -- non-finite numbers: a diverging run stops, NaN weights are not trained on -------------------------------------


def _all_finite(path: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in read_checkpoint(path)["state_dict"].values())


def test_a_diverging_run_stops_naming_the_batch_and_saves_nothing_non_finite(cfg_factory, tmp_path: Path) -> None:
    with pytest.raises(DivergedError, match=r"the training loss is nan at epoch 0, batch \d+ \(after \d+ optimizer"):
        run(cfg_factory("model.lr=1e30", "checkpoint_every_n_steps=1", "trainer.limit_train_batches=6"))
    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints and all(_all_finite(path) for path in checkpoints)  # written before it diverged: finite


def _edited_checkpoint(cfg_factory, tmp_path: Path, edit) -> Path:
    run(cfg_factory("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    edit(checkpoint["state_dict"])
    edited = tmp_path / "edited.ckpt"
    resave_checkpoint(checkpoint, edited)
    return edited


def _nan_in_a_weight(state: dict) -> None:
    state["net.gpt.out_head.weight"][0, 0] = float("nan")


def _another_size(state: dict) -> None:
    state["net.gpt.out_head.weight"] = torch.zeros(2, 32)


def _a_foreign_tensor(state: dict) -> None:
    state["net.lora_A"] = torch.zeros(4)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_nan_in_a_weight, "parameter net.gpt.out_head.weight holds NaN/Inf values"),
        (_another_size, "net.gpt.out_head.weight has shape (2, 32), this model's has (2, 64): a checkpoint of another"),
        (_a_foreign_tensor, "holds net.lora_A, which this model does not have"),
    ],
    ids=["NaN weight", "another shape", "foreign tensor"],
)
def test_a_checkpoint_that_cannot_be_trained_on_is_refused(cfg_factory, tmp_path: Path, edit, message: str) -> None:
    edited = _edited_checkpoint(cfg_factory, tmp_path, edit)
    config_before = (tmp_path / "run" / "config.yaml").read_bytes()
    with pytest.raises((CheckpointError, ConfigError), match=re.escape(message)):
        run(cfg_factory(f"ckpt_path={edited}", "trainer.max_epochs=2"))
    assert (tmp_path / "run" / "config.yaml").read_bytes() == config_before


# -- a moved run, a deleted best checkpoint ------------------------------------------------------------------------


def test_a_moved_run_evaluates_its_own_best_checkpoint(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> None:
    short = ("trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2")
    run(smoke_cfg(tmp_path / "run", tmp_path / "data", sms_zip, tokenizer_file, *short, "report=false"))
    shutil.move(tmp_path / "run", tmp_path / "moved")
    again = smoke_cfg(tmp_path / "moved", tmp_path / "data", sms_zip, tokenizer_file, *short, "resume=true")
    summary = run(again)  # training is complete: only the evaluation runs, on the best checkpoint in the new folder
    best = Path(summary["best_checkpoint"])
    assert best.parent == tmp_path / "moved" / "checkpoints"
    # Finite weights whose outputs are not (logits overflow): no metrics.json with a NaN loss, no crash in the metrics.
    checkpoint = torch.load(best, weights_only=True)
    checkpoint["state_dict"]["net.gpt.out_head.weight"] *= 1e38
    resave_checkpoint(checkpoint, best)
    (tmp_path / "moved" / "metrics.json").unlink()
    with pytest.raises(DivergedError, match=f"evaluating {best} on the train split gives a loss of (nan|inf)"):
        run(again)
    assert not (tmp_path / "moved" / "metrics.json").exists()
    best.unlink()
    with pytest.raises(ConfigError, match="that this run recorded is missing"):
        run(again)


# -- a full disk ---------------------------------------------------------------------------------------------------


def test_a_full_disk_is_named_and_the_previous_file_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"the previous checkpoint")
    real_mkstemp = tempfile.mkstemp

    def mkstemp_on_a_full_disk(**kwargs):  # the temporary file's writes fail as on a full disk (ENOSPC)
        fd, name = real_mkstemp(**kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp_on_a_full_disk)
    with pytest.raises(DiskFullError, match=f"disk full: no space left in {tmp_path} for last.ckpt"):
        atomic_write(target, lambda f: torch.save({"w": torch.zeros(100_000)}, f))  # torch: "unexpected pos"
    assert target.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_a_full_disk_whose_errno_the_writer_lost_is_named_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save can meet a full disk as a bare RuntimeError ("unexpected pos", no OSError behind it): the disk is
    known full only by its free space, which is gone while the partial file is there and back once it is removed.
    It must be measured before the removal (a CI run lost the checkpoint's name this way)."""
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"the previous checkpoint")
    real_disk_usage = shutil.disk_usage

    def disk_usage(folder):  # 20 MiB free, none while our partial file fills the disk
        partial = list(Path(folder).glob(".last.ckpt.*.tmp"))
        return real_disk_usage(folder)._replace(free=0 if partial else 20 * 2**20)

    def write_until_full(f) -> None:
        f.write(b"part of a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:859] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(files.shutil, "disk_usage", disk_usage)
    with pytest.raises(DiskFullError, match=re.escape(f"no space left in {tmp_path} for last.ckpt (20.0 MiB free")):
        atomic_write(target, write_until_full)
    assert target.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_the_checkpoints_full_disk_is_named_over_a_loggers_met_while_stopping() -> None:
    """Lightning finalizes the loggers while the checkpoint's DiskFullError stops the run: on a full disk their save
    fails too, and its OSError carries ours as context. The error names the checkpoint, the root cause."""
    ours = DiskFullError("disk full: no space left in /r/checkpoints for last.ckpt; last.ckpt was not changed")
    loggers = OSError(errno.ENOSPC, "No space left on device", "/r/logs/metrics.csv")
    loggers.__context__ = ours  # raised while ours was being handled
    assert disk_full_error(loggers) is ours
    assert disk_full_error(ValueError("not about a disk")) is None


def test_a_full_disk_met_by_a_logger_is_one_line_too(
    tmp_path: Path, sms_zip: Path, tokenizer_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The logger's metrics.csv (written by Lightning's CSV writer, not atomic_write) on a full disk: the same
    one-line error naming the file and how to continue, not a traceback."""
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    def save_on_a_full_disk(writer: ExperimentWriter) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", writer.metrics_file_path)

    monkeypatch.setattr(ExperimentWriter, "save", save_on_a_full_disk)
    cfg = smoke_cfg(tmp_path / "run", tmp_path / "data", sms_zip, tokenizer_file, "trainer.limit_train_batches=2")
    metrics_csv = tmp_path / "run" / "logs" / "metrics.csv"
    with pytest.raises(DiskFullError) as raised:
        run(cfg)
    assert str(raised.value) == (
        f"disk full: no space left for {metrics_csv} (No space left on device). Free some space there; "
        "then continue with: python train.py resume=true run_name=run"
    )


def test_a_logger_meeting_the_disk_a_checkpoint_write_is_filling_names_the_checkpoint(
    tmp_path: Path, sms_zip: Path, tokenizer_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a CI run lost: while the background write of last.ckpt fills the disk, the CSV logger's save meets
    it first (fsspec's close: an OSError naming no file) and again while Lightning stops, which then skips the
    teardown that reports the write's error. The error names the checkpoint, the write that filled the disk."""
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    import spam_lightning.training.checkpoints as checkpoints

    filling, logger_failed = threading.Event(), threading.Event()

    def write_filling_the_disk(path, write) -> None:
        filling.set()
        assert logger_failed.wait(timeout=60)  # the write fails only after the logger met the full disk
        raise DiskFullError(f"disk full: no space left in {Path(path).parent} for {Path(path).name}; not changed")

    def save(writer: ExperimentWriter) -> None:
        if filling.is_set():
            logger_failed.set()
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "atomic_write", write_filling_the_disk)
    monkeypatch.setattr(ExperimentWriter, "save", save)
    cfg = smoke_cfg(tmp_path / "run", tmp_path / "data", sms_zip, tokenizer_file, "trainer.limit_train_batches=4",
                    "trainer.log_every_n_steps=1", "checkpoint_every_n_steps=2")  # fmt: skip
    with pytest.raises(DiskFullError) as raised:
        run(cfg)
    assert str(raised.value).startswith(f"disk full: no space left in {tmp_path / 'run' / 'checkpoints'} for last.ckpt")
    assert str(raised.value).endswith("then continue with: python train.py resume=true run_name=run")


@pytest.fixture
def small_disk(tmp_path: Path):
    """tmp_path/runs on a 60 MB tmpfs: one smoke last.ckpt (40 MB) fits, a second write beside it does not."""
    disk = tmp_path / "runs"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}); the /dev/full test stands")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_run_on_a_full_disk_stops_naming_it_and_resumes_after(
    small_disk: Path, tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    short = ("trainer.max_epochs=1", "trainer.limit_train_batches=6", "checkpoint_every_n_steps=2")
    full = train_cli(tmp_path, *short, sms_zip=sms_zip, tokenizer_file=tokenizer_file)
    assert full.returncode == 1, full.stderr[-3000:]
    last_line = full.stderr.strip().splitlines()[-1]
    checkpoints = small_disk / "r" / "checkpoints"
    assert last_line.startswith(f"error: disk full: no space left in {checkpoints} for last.ckpt"), full.stderr[-3000:]
    assert last_line.endswith("continue with: python train.py resume=true run_name=r")
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 2  # the previous one, complete
    assert not list(checkpoints.glob(".*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=400m", str(small_disk)], check=True)  # space freed
    resumed = train_cli(tmp_path, *short, "resume=true", sms_zip=sms_zip, tokenizer_file=tokenizer_file)
    assert resumed.returncode == 0, resumed.stderr[-3000:]


# -- known errors are one line (a traceback with HYDRA_FULL_ERROR=1) -----------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=-1", "seed=-1: expected an integer in [0, 4294967295]"),
        ("seed=4294967296", "seed=4294967296: expected an integer in [0, 4294967295]"),
        ("seed=abc", "seed='abc': expected an integer"),
        ("seed=1.5", "seed=1.5: expected an integer"),
        ("data.seed=-5", "data.seed=-5: expected an integer"),
    ],
)
def test_a_bad_seed_is_refused(cfg_factory, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        run(cfg_factory(override))


def test_hydra_full_error_shows_the_traceback_of_a_known_error(tmp_path: Path) -> None:
    # Without it: one `error:` line (test_train.py::test_failed_config_is_one_line_and_leaves_no_folder).
    full = run_script("train.py", "experiment=smoke", f"runs_dir={tmp_path}", "seed=-1", env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1
    assert "Traceback (most recent call last)" in full.stderr
    assert full.stderr.strip().splitlines()[-1].endswith("ConfigError: seed=-1: expected an integer in [0, 4294967295]")
