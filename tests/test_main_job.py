"""The main job as users run it: `make train` on a fresh copy of the repository, every download through the
real download code, served by a local HTTP server (see helpers/user_machine.py for what differs from a user's
run). The 124M architecture of the default recipe runs (random weights in the Hub's layout); runs are
shortened to a few batches.

Marked slow (a few minutes on 2 cores); CI runs them (.ci/run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.local_internet import LocalInternet
from helpers.user_machine import EVAL_TEXTS, SHORT, UserMachine, serve_downloads

from spam_lightning.files import file_sha256
from spam_lightning.inference.checkpoint import RECORD_KEY
from spam_lightning.inference.checkpoint import read_checkpoint as load_checkpoint
from spam_lightning.model.weights import HF_REVISIONS

PARAMETERS_124M = {"trainable": 7_090_946, "total": 124_441_346}  # last block + final norm + 2-class head
PLOTS = ("loss.png", "accuracy.png", "confusion_matrix.png", "pr_curve.png")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("user")
    with LocalInternet() as internet:
        serve_downloads(internet, root)
        yield UserMachine(root, internet)


def output(result) -> str:
    return result.stdout[-6000:] + result.stderr[-6000:]


def only_new_run(machine: UserMachine, before: list[Path]) -> Path:
    new = [p for p in machine.run_dirs() if p not in before]
    assert len(new) == 1, new
    return new[0]


def check_run(run_dir: Path, world_size: int = 1) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["parameters"] == PARAMETERS_124M
    assert metrics["world_size"] == world_size
    for split in ("train", "validation", "test"):
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0
        assert sum(map(sum, metrics[split]["confusion_matrix"])) == EVAL_TEXTS * world_size  # a share per rank
    best = Path(metrics["best_checkpoint"])
    assert best.parent == run_dir / "checkpoints" and best.is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    for plot in PLOTS:
        assert (run_dir / plot).stat().st_size > 1000, plot
    return metrics


def test_make_train_default_recipe_through_the_downloads(machine: UserMachine) -> None:
    result = machine.sh(machine.train_command(f"{machine.url_overrides} {SHORT}"))
    assert result.returncode == 0, output(result)
    [run_dir] = machine.run_dirs()
    check_run(run_dir)

    # Each download happened once, the weights at the pinned revision (the server serves no other).
    assert machine.downloads() == {"zip": 1, "tokenizer": 1, "weights": 1}
    config = (run_dir / "config.yaml").read_text()
    assert "arch: gpt2\n" in config and "pretrained: gpt2\n" in config and "pool: last_token" in config
    # The served weights are the ones trained from, and the checkpoints hold only what training changed: the
    # last block, the final norm and the head (7,090,946 parameters), with the frozen weights' provenance.
    last = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last[RECORD_KEY]["frozen_weights"] == {
        "pretrained": "gpt2",
        "revision": HF_REVISIONS["gpt2"],
        "sha256": file_sha256(machine.root / "model.safetensors"),
    }
    assert sum(t.numel() for t in last["state_dict"].values()) == 7_090_946
    [best] = (run_dir / "checkpoints").glob("epoch*.ckpt")
    assert best.stat().st_size <= 30e6, best.stat().st_size  # the default recipe's model: <= 30 MB (was ~555 MB)
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_size <= 90e6  # + AdamW state
    assert (machine.clone / "data" / "sms_spam" / "seed-123" / "train.csv").is_file()
    assert (machine.root / "cache" / "gpt2.tiktoken").is_file()

    # The run's log holds what the console showed: the data summary, warnings, the results table.
    log = (run_dir / "train.log").read_text()
    for line in ("train       1045 messages:  528 ham,  517 spam", "py.warnings", "trainable parameters: 7,090,946"):
        assert line in log
    assert "split         accuracy precision" in log
    assert "Evaluating validation" in result.stdout  # each evaluation pass names its split


def test_book_experiment_uses_the_caches(machine: UserMachine) -> None:
    before, downloads = machine.run_dirs(), machine.downloads()
    result = machine.sh(machine.train_command(f"experiment=book {machine.url_overrides} {SHORT}"))
    assert result.returncode == 0, output(result)
    run_dir = only_new_run(machine, before)
    check_run(run_dir)
    assert "pool: last\n" in (run_dir / "config.yaml").read_text()
    assert machine.downloads() == downloads  # data, vocabulary and weights all came from the caches


def test_ddp_over_two_cpu_processes(machine: UserMachine) -> None:
    before = machine.run_dirs()
    args = f"trainer.accelerator=cpu trainer.devices=2 {machine.url_overrides} {SHORT}"
    result = machine.sh(machine.train_command(args))
    assert result.returncode == 0, output(result)
    check_run(only_new_run(machine, before), world_size=2)


def test_debug_run_of_the_default_recipe_from_another_directory(machine: UserMachine) -> None:
    """`python /path/to/train.py debug=fdr` started elsewhere: the 124M default recipe, one batch of each stage, the
    config tree printed, the run in the project's runs/debug/, nothing in the current directory."""
    elsewhere = machine.root / "elsewhere"
    elsewhere.mkdir()
    before = machine.run_dirs()
    command = f"cd {elsewhere} && python {machine.clone / 'train.py'} debug=fdr run_name=fdr {machine.url_overrides}"
    result = machine.sh(command)
    assert result.returncode == 0, output(result)
    assert "├── model" in result.stdout and "pretrained: gpt2" in result.stdout
    metrics = json.loads((machine.clone / "runs" / "debug" / "fdr" / "metrics.json").read_text())
    assert metrics["parameters"] == PARAMETERS_124M
    assert [p.name for p in machine.run_dirs() if p not in before] in ([], ["debug"])
    assert list(elsewhere.iterdir()) == []


def test_offline_fails_with_one_message(tmp_path: Path) -> None:
    """No network (every download refused) and no local copies: one message naming each download and the
    override that replaces it; no traceback, no run directory."""
    with LocalInternet() as internet:
        machine = UserMachine(tmp_path, internet)
        internet.stop()  # nothing listens on its port any more: connections are refused
        result = machine.sh(machine.train_command(machine.url_overrides))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    error = result.stderr[result.stderr.index("error: ") :]
    assert error.startswith("error: several downloads failed:\n- could not") and error.count("\n- ") == 3
    for part in (
        "could not download the SMS Spam Collection",
        "data.source=/path/to/sms+spam+collection.zip",
        "could not download GPT-2's BPE vocabulary",
        "data.tokenizer_file=/path/to/gpt2.tiktoken",
        "could not get model.safetensors of openai-community/gpt2",
        "model.pretrained=/path/to/model.safetensors",
    ):
        assert part in error, error
    assert machine.run_dirs() == []
