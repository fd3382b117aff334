"""The training app: configs compose, trainers run, the smoke recipe learns, DDP and resume work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TOKENIZER_FILE
from helpers.scripts import run_script
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from spam_lightning.errors import CheckpointError
from spam_lightning.inference.checkpoint import read_checkpoint as load_checkpoint
from spam_lightning.training.module import SpamClassifier
from spam_lightning.training.run import run

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def make_cfg(tmp: Path, *overrides: str, sms_zip: Path, tokenizer_file: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                "experiment=smoke",
                f"run_dir={tmp / 'run'}",
                f"data.source={sms_zip}",
                f"data.tokenizer_file={tokenizer_file}",
                f"data.data_dir={tmp / 'data'}",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                *overrides,
            ],
        )


@pytest.fixture
def cfg_factory(tmp_path: Path, sms_zip: Path, tokenizer_file: str):
    def factory(*overrides: str, tmp: Path = tmp_path) -> DictConfig:
        return make_cfg(tmp, *overrides, sms_zip=sms_zip, tokenizer_file=tokenizer_file)

    return factory


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(ckpt)["state_dict"]


# -- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes(experiment: str) -> None:
    result = run_script("train.py", f"experiment={experiment}", "--cfg", "job", "--resolve")
    assert result.returncode == 0, result.stderr
    assert "_target_: spam_lightning.training.module.SpamClassifier" in result.stdout


@pytest.mark.parametrize("group", ["model", "trainer", "logger", "callbacks"])
def test_every_config_in_group_composes(group: str, tmp_path: Path, cfg_factory) -> None:
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        cfg = cfg_factory(f"{group}={option}")
        assert cfg[group] is not None or option == "none"


def test_default_is_the_book_recipe(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"run_dir={tmp_path}"])
    assert cfg.seed == 123
    assert cfg.model.arch == "gpt2" and cfg.model.pretrained == "gpt2"
    assert (cfg.model.lr, cfg.model.weight_decay, cfg.data.batch_size) == (5e-5, 0.1, 8)
    assert cfg.model.trainable_layers == "last_block"
    assert cfg.trainer.max_epochs == 5 and cfg.trainer.accelerator == "auto"


# -- trainers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("trainer", ["default", "cpu"])
def test_fast_dev_run(trainer: str, cfg_factory) -> None:
    cfg = cfg_factory(f"trainer={trainer}", "trainer.fast_dev_run=true", "test_after_fit=false")
    run(cfg)


def test_smoke_experiment_learns(cfg_factory, tmp_path: Path) -> None:
    metrics = run(cfg_factory())
    run_dir = tmp_path / "run"
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["test"]["accuracy"] >= 0.85
    assert set(written["test"]) >= {"accuracy", "precision", "recall", "f1", "auroc", "loss", "confusion_matrix"}
    assert sum(map(sum, written["test"]["confusion_matrix"])) == 300
    assert sum(map(sum, written["validation"]["confusion_matrix"])) == 149
    assert written["parameters"]["trainable"] == written["parameters"]["total"] > 0
    assert written["time_seconds"]["fit"] > 0
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert Path(written["best_checkpoint"]).is_file()
    assert (run_dir / "logs" / "metrics.csv").is_file()


def test_ddp_two_cpu_processes(tmp_path: Path, sms_zip: Path, tokenizer_file: str) -> None:
    result = run_script(
        "train.py",
        "experiment=smoke",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        f"runs_dir={tmp_path / 'runs'}",
        "run_name=ddp",
        f"data.source={sms_zip}",
        f"data.tokenizer_file={tokenizer_file}",
        f"data.data_dir={tmp_path / 'data'}",
        env={"PYTHONUNBUFFERED": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert os.listdir(tmp_path / "runs") == ["ddp"]  # one run directory, not one per rank
    metrics = json.loads((tmp_path / "runs" / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 300  # every test text counted once
    assert result.stdout.count("split ") == 1  # only rank 0 prints the results table


# -- checkpoints and resume -----------------------------------------------------------------------------


def test_resume_equals_uninterrupted(cfg_factory, tmp_path: Path) -> None:
    common = ("trainer.deterministic=true", "test_after_fit=true")
    straight = run(cfg_factory("trainer.max_epochs=2", *common, tmp=tmp_path / "a"))
    run(cfg_factory("trainer.max_epochs=1", *common, tmp=tmp_path / "b"))
    resumed = run(cfg_factory("trainer.max_epochs=2", "resume=true", *common, tmp=tmp_path / "b"))
    last_a = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    last_b = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    wa, wb = weights(last_a), weights(last_b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert load_checkpoint(last_b)["global_step"] == load_checkpoint(last_a)["global_step"] == 2 * (1045 // 16)
    for split in ("train", "validation", "test"):
        assert resumed[split] == straight[split]


def test_ckpt_path_continues_from_checkpoint(cfg_factory, tmp_path: Path) -> None:
    run(cfg_factory("trainer.max_epochs=1", "test_after_fit=false", tmp=tmp_path / "first"))
    ckpt = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 0 and state["global_step"] == 1045 // 16
    assert state["optimizer_states"]
    run(cfg_factory("trainer.max_epochs=2", f"ckpt_path={ckpt}", "test_after_fit=false", tmp=tmp_path / "second"))
    after = load_checkpoint(tmp_path / "second" / "run" / "checkpoints" / "last.ckpt")
    assert after["global_step"] == 2 * (1045 // 16)


def test_resume_without_checkpoint_starts_fresh(cfg_factory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="spam_lightning"):
        run(cfg_factory("resume=true", "trainer.fast_dev_run=true", "test_after_fit=false"))
    assert "starting fresh" in caplog.text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.arch.emb_dim=32", "model.arch"),
        ("model.trainable_layers=1", "model.trainable_layers"),
        ("data.seed=7", r"data\.seed=123 \(this run: 7\)"),
    ],
)
def test_resume_with_incompatible_config_is_refused(override: str, message: str, cfg_factory, tmp_path: Path) -> None:
    run(cfg_factory("trainer.max_steps=2", "trainer.max_epochs=1", "test_after_fit=false"))
    with pytest.raises(ValueError, match=message):
        run(cfg_factory(override, "resume=true", "trainer.max_epochs=2", "test_after_fit=false"))


def test_truncated_checkpoint_is_a_clear_error(cfg_factory, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.ckpt' cannot be read"):
        run(cfg_factory(f"ckpt_path={bad}"))


# -- the run directory and the run's log (as users run train.py) --------------------------------------------

FALSE_WARNING_TEXTS = (
    "dataloader is not resumable",
    "will be deleted",
    "exists and is not empty",
    "module(s) in eval mode",
    "`weights_only` was not set",
    "does not have many workers",
)


def smoke_overrides(tmp: Path, sms_zip: Path) -> tuple[str, ...]:
    return (
        "experiment=smoke",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        f"runs_dir={tmp / 'runs'}",
        f"data.source={sms_zip}",
        f"data.tokenizer_file={TOKENIZER_FILE}",
        f"data.data_dir={tmp / 'data'}",
    )


def train_cli(tmp: Path, sms_zip: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return run_script(
        "train.py", *smoke_overrides(tmp, sms_zip), *overrides, env={"PYTHONUNBUFFERED": "1"}, timeout=300
    )


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_log_refused_rerun_and_clean_resume(tmp_path: Path, sms_zip: Path) -> None:
    first = train_cli(tmp_path, sms_zip, "run_name=r", "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "r"
    # train.log holds what the console showed: the data summary, warnings and the results table.
    log = (run_dir / "train.log").read_text()
    assert "train       1045 messages:  528 ham,  517 spam" in log
    assert "smaller than the logging interval" in log  # a Lightning warning (3 batches < log_every_n_steps)
    assert "split         accuracy precision" in log and "run directory:" in log

    # The same run_name again, without resume=true: refused before anything in the folder changes.
    before = folder_bytes(run_dir)
    again = train_cli(tmp_path, sms_zip, "run_name=r", "trainer.max_epochs=1")
    assert again.returncode == 1
    assert f"error: {run_dir} already holds a run; continue it with resume=true" in again.stderr
    assert folder_bytes(run_dir) == before

    # resume=true continues it, without the warnings that are false for this project.
    [fit_timer] = [
        v for k, v in load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["callbacks"].items() if "FitTimer" in k
    ]
    resumed = train_cli(tmp_path, sms_zip, "run_name=r", "trainer.max_epochs=2", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for text in FALSE_WARNING_TEXTS:
        assert text not in resumed.stdout + resumed.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The fit time sums both sessions (the first one's up to the checkpoint the second continued from).
    assert 0 < fit_timer["seconds"] < metrics["time_seconds"]["fit"]
    assert metrics["global_step"] == 2 * 3


def test_failed_config_is_one_line_and_leaves_no_folder(tmp_path: Path, sms_zip: Path) -> None:
    result = train_cli(tmp_path, sms_zip, "model.lr=-1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: model.lr must be a number > 0, got -1"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_logger_null_turns_logging_off(tmp_path: Path, sms_zip: Path) -> None:
    result = train_cli(tmp_path, sms_zip, "run_name=quiet", "logger=null", "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "quiet"
    assert not (run_dir / "logs").exists()
    assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_the_num_workers_advice_is_silenced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning advises DataLoader workers where a machine has cores to spare (not on our 2-core CI): our batches are
    slices of token ids in memory, so the advice is false here and train.py filters it."""
    import warnings

    import lightning as L
    from lightning.pytorch.trainer.connectors import data_connector
    from torch.utils.data import DataLoader

    from spam_lightning.training.runs import silence_false_warnings

    monkeypatch.setattr(data_connector, "suggested_max_num_workers", lambda devices: 15)  # a 16-core machine
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(list(range(4)), batch_size=2, num_workers=0)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        data_connector._worker_check(trainer, loader, "train_dataloader")
        silence_false_warnings()
        data_connector._worker_check(trainer, loader, "val_dataloader")
    assert [str(w.message)[:45] for w in shown] == ["The 'train_dataloader' does not have many wor"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Lightning's Tensor Cores advice is about CUDA GPUs")
def test_tf32_is_set_before_lightning_checks_it(tmp_path: Path, sms_zip: Path) -> None:
    """model.tf32 (on by default) is applied before the fit, so Lightning sees it and gives no Tensor Cores advice."""
    result = train_cli(tmp_path, sms_zip, "trainer.accelerator=gpu", "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Tensor Cores" not in result.stdout + result.stderr


def test_training_imports_no_metric_backend_it_never_uses() -> None:
    """Lightning imports torchmetrics, which imports transformers, scipy.signal and matplotlib where installed (its
    text and audio metrics, its plots): a training process leaves them out until its own plots at the end, and the
    availability checks it bent are restored."""
    import importlib.util

    if not all(importlib.util.find_spec(name) for name in ("transformers", "scipy", "matplotlib")):
        pytest.skip("transformers, scipy and matplotlib are not all installed: nothing to leave out")
    probe = (
        "import sys, spam_lightning.training.run\n"
        "from lightning_utilities.core.imports import RequirementCache, package_available\n"
        "print(sorted({'transformers', 'scipy', 'matplotlib'} & set(sys.modules)), package_available('scipy'),"
        " bool(RequirementCache('transformers')), package_available('matplotlib'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["[]", "True", "True", "True"]


def test_train_py_builds_the_gpt_while_lightning_imports(tmp_path: Path, sms_zip: Path) -> None:
    """train.py starts the GPT's build (init, weights) in a thread before it imports Lightning, and the run takes it:
    the only build is that thread's (model.weights.build_gpt_ahead; its equality with a build in place is tested in
    tests/model/test_weights.py)."""
    probe = (
        "import sys, threading\n"
        "import spam_lightning.model.weights as weights\n"
        "build = weights._build_gpt\n"
        "def recorded(*args):\n"
        "    print('built in', threading.current_thread().name)\n"
        "    return build(*args)\n"
        "weights._build_gpt = recorded\n"
        "from spam_lightning.cli import train\n"
        f"sys.argv = ['train.py', *{list(smoke_overrides(tmp_path, sms_zip))!r}, 'run_name=ahead']\n"
        "train()\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line for line in done.stdout.splitlines() if line.startswith("built in")] == ["built in build_gpt_ahead"]


def test_the_metrics_take_each_epochs_outputs_at_once(
    tmp_path: Path, sms_zip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step keeps its probabilities and labels; the metrics are updated once per stage and epoch with all of them
    (one update per step was a fifth of the framework's host work per step), and so score every text."""
    from helpers.smoke import train_smoke

    import spam_lightning.training.module as module

    updates: list[int] = []
    update = module.update_metrics

    def counted(metrics: object, probs: torch.Tensor, labels: torch.Tensor, positive: int | None) -> None:
        updates.append(len(labels))
        update(metrics, probs, labels, positive)

    monkeypatch.setattr(module, "update_metrics", counted)
    train_smoke(
        tmp_path, sms_zip, TOKENIZER_FILE, "data.batch_size=8", "trainer.limit_train_batches=12",
        "trainer.limit_val_batches=2", "+trainer.num_sanity_val_steps=0", "test_after_fit=false",
    )  # fmt: skip
    assert updates == [149, 12 * 8]  # the validation split (two eval batches), then the training epoch at its end


@pytest.mark.parametrize("layers", ["last_block", "all"])  # the default recipe's (the frozen-feature cache), all
def test_a_training_step_reads_one_value_from_the_device(tmp_path: Path, sms_zip: Path, layers: str) -> None:
    """On a GPU every read of a tensor's value on the host makes the step wait for the device. A step reads one: the
    loss's NaN check before the backward pass (SpamClassifier._stop_if_not_finite). Not per step: the metrics'
    argument checks (validate_args), the mean loss's NaN checks (torchmetrics' MeanMetric), the progress bar's loss
    (read every log_every_n_steps steps, where Lightning's prog_bar=True reads it after every step)."""
    from helpers.smoke import train_smoke

    counts = tmp_path / "reads.json"
    train_smoke(
        tmp_path, sms_zip, TOKENIZER_FILE, f"model.trainable_layers={layers}", "data.batch_size=8",
        "trainer.max_epochs=2", "trainer.limit_train_batches=12", "trainer.enable_progress_bar=true",
        "+callbacks.host_reads._target_=helpers.host_reads.HostReadsPerStep", f"+callbacks.host_reads.path={counts}",
    )  # fmt: skip
    steps = json.loads(counts.read_text())
    assert len(steps) == 11  # between the starts of the 12 batches
    module_file = SpamClassifier.__module__.replace(".", "/") + ".py"
    for reads in steps:  # the NaN check first, once
        assert [r for r in reads if r.startswith("__bool__") and module_file in r] == reads[:1], reads
    # Every log_every_n_steps (5 in experiment=smoke) steps: the bar's loss and Lightning's write to the loggers.
    logging_steps = [reads[1:] for reads in steps if len(reads) > 1]
    assert 1 <= len(logging_steps) <= 3, steps
    for reads in logging_steps:
        assert all("progress.py" in r or "lightning/" in r for r in reads), reads
