"""Sweeps and scale-out: grid sweeps with their summary, the Optuna search, multirun x DDP, torchrun nodes."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.scripts import run_script
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import spam_lightning.training.sweeps as sweep
from spam_lightning.errors import ConfigError
from spam_lightning.training.ddp import WorldSizeError
from spam_lightning.training.run import run

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
# Jobs of a few seconds: the smoke model, 1 epoch of 3 batches, 1 validation and 1 test batch per split.
TINY = (
    "experiment=smoke",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "report=false",
)


@pytest.fixture(scope="module")
def data_args(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> list[str]:
    """One prepared data folder for all the jobs of this module."""
    data_dir = tmp_path_factory.mktemp("sms_data")
    return [f"data.source={sms_zip}", f"data.tokenizer_file={tokenizer_file}", f"data.data_dir={data_dir}"]


def train(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return run_script("train.py", *args, env={"PYTHONUNBUFFERED": "1", **(env or {})}, timeout=timeout)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout[-4000:] + result.stderr[-4000:]


def table_rows(markdown: str) -> list[list[str]]:
    """The rows of the Markdown table in summary.md, header first (without the alignment row)."""
    rows = [line.strip("|").split(" | ") for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows]


def job_dirs(sweep_dir: Path) -> list[str]:
    return sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir())


# -- grid sweeps -----------------------------------------------------------------------------------


def test_grid_sweep_writes_a_sorted_summary(tmp_path: Path, data_args: list[str]) -> None:
    result = train(
        "-m",
        *TINY,
        *data_args,
        f"runs_dir={tmp_path}",
        "run_name=grid",
        "model.lr=1e-3,1e-4",
        "model.trainable_layers=last_block,all",
    )
    assert result.returncode == 0, output(result)
    sweep_dir = tmp_path / "grid"
    assert job_dirs(sweep_dir) == ["0", "1", "2", "3"]
    assert all((sweep_dir / job / "metrics.json").is_file() for job in ("0", "1", "2", "3"))

    markdown = (sweep_dir / "summary.md").read_text()
    assert markdown in result.stdout + result.stderr  # also logged at the end of the sweep
    header, *rows = table_rows(markdown)
    assert header[:3] == ["job", "model.lr", "model.trainable_layers"]
    assert header[-1] == "status" and "val_accuracy" in header and "test_accuracy" in header and "time (s)" in header
    assert sorted((r[1], r[2]) for r in rows) == sorted(
        (lr, layers) for lr in ("0.001", "0.0001") for layers in ("last_block", "all")
    )
    assert all(r[-1] == "ok" for r in rows)
    val = [float(r[header.index("val_accuracy")]) for r in rows]
    assert val == sorted(val, reverse=True)
    for row in rows:  # the table shows each job's own metrics.json
        metrics = json.loads((sweep_dir / row[0] / "metrics.json").read_text())
        assert float(row[header.index("test_accuracy")]) == pytest.approx(metrics["test"]["accuracy"], abs=1e-4)
        assert float(row[header.index("time (s)")]) == pytest.approx(sum(metrics["time_seconds"].values()), abs=0.1)
    assert "`experiment=smoke`" in markdown  # the overrides common to all jobs, above the table

    with (sweep_dir / "summary.csv").open() as f:
        records = list(csv.DictReader(f))
    assert [r["job"] for r in records] == [r[0] for r in rows]
    assert {r["status"] for r in records} == {"ok"}
    assert all(r["run_dir"] == str(sweep_dir / r["job"]) for r in records)


@pytest.mark.slow  # the Optuna test below covers failed jobs too (not their exit code)
def test_failed_job_is_listed_and_the_sweep_goes_on(tmp_path: Path, data_args: list[str]) -> None:
    result = train("-m", *TINY, *data_args, f"runs_dir={tmp_path}", "run_name=bad", "model.pool=bogus,last_token")
    assert result.returncode == 1, output(result)  # after all jobs: a grid with a failed job exits 1
    sweep_dir = tmp_path / "bad"
    assert job_dirs(sweep_dir) == ["0", "1"]
    failed = json.loads((sweep_dir / "0" / "failed.json").read_text())
    assert failed["error"].startswith("ConfigError: model.pool must be one of") and "Traceback" in failed["traceback"]
    assert (sweep_dir / "1" / "metrics.json").is_file()  # the next job ran
    _header, *rows = table_rows((sweep_dir / "summary.md").read_text())
    assert [(r[0], r[1]) for r in rows] == [("1", "last_token"), ("0", "bogus")]  # failed jobs last
    assert rows[0][-1] == "ok" and rows[1][-1].startswith("failed: ConfigError: model.pool must be one of")


def test_summary_of_fabricated_jobs(tmp_path: Path) -> None:
    def job(name: str, overrides: list[str], val: float | None = None, error: str | None = None) -> None:
        run_dir = tmp_path / name
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        if val is not None:
            metrics = {"validation": {"accuracy": val}, "test": {"accuracy": val - 0.01}, "time_seconds": {"fit": 2}}
            (run_dir / "metrics.json").write_text(json.dumps(metrics))
        if error is not None:
            sweep.write_failure(run_dir, error)

    job("0", ["a=1", "b=x"], val=0.5)
    job("1", ["a=1", "b=y"], error="RuntimeError: boom | pipe")
    job("2", ["a=1", "b=z"], val=0.9)
    job("10", ["a=1", "b=w"])  # still running, or test_after_fit=false
    results = sweep.write_summary(tmp_path, "validation/accuracy", "maximize")
    assert [(r.job, r.status) for r in results] == [("2", "ok"), ("0", "ok"), ("1", "failed"), ("10", "no metrics")]
    markdown = (tmp_path / "summary.md").read_text()
    assert "4 jobs: 2 ok, 1 failed, 1 without metrics" in markdown and "Common overrides: `a=1`" in markdown
    header, *rows = table_rows(markdown)
    assert header[:2] == ["job", "b"]
    assert rows[2][-1] == "failed: RuntimeError: boom \\| pipe"
    assert [r.job for r in sweep.rank(results, "validation/accuracy", "minimize")] == ["0", "2", "1", "10"]
    # Another optimized metric: best first in its own direction, shown as a column of its own.
    results = sweep.write_summary(tmp_path, "test/accuracy")
    assert [r.job for r in results][:2] == ["2", "0"]
    assert "test_accuracy" in table_rows((tmp_path / "summary.md").read_text())[0]
    with pytest.raises(ConfigError, match=r"with optimized_metric=test/accuracy, which is better higher"):
        sweep.write_summary(tmp_path, "test/accuracy", "minimize")


def test_optimized_metric_keys_and_directions() -> None:
    assert sweep.objective_direction("validation/loss") == "minimize"
    assert sweep.objective_direction("validation/auroc", "maximize") == "maximize"
    metrics = {"validation": {"accuracy": 0.9, "loss": 0.25}, "test": {"f1": 0.5}}
    assert sweep.objective_value(metrics, "validation/loss") == 0.25
    assert sweep.objective_value(metrics, "test/f1") == 0.5
    assert sweep.objective_value({}, "validation/accuracy") is None  # a job without metrics: a failed trial
    with pytest.raises(ConfigError, match=r"^optimized_metric=validation/tp: not a metric of metrics.json; known: "):
        sweep.objective_direction("validation/tp")
    with pytest.raises(ConfigError, match=r"which is better lower: use hydra\.sweeper\.direction=minimize"):
        sweep.objective_direction("train/loss", "maximize")


# -- Optuna ----------------------------------------------------------------------------------------


def test_search_space_from_hydra_sweep_syntax() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from spam_lightning.training.sweeps import format_override, search_space

    params = {
        "model.lr": "tag(log, interval(1e-5, 1e-3))",
        "model.pool": "choice(last_token, mean)",
        "n": "int(interval(1, 4))",
    }
    space, fixed = search_space(params, ["experiment=smoke", "n=2", "data.batch_size=8,16"], OverridesParser.create())
    assert space == {
        "model.lr": FloatDistribution(1e-5, 1e-3, log=True),
        "model.pool": CategoricalDistribution(["last_token", "mean"]),
        "data.batch_size": CategoricalDistribution([8, 16]),
    }
    assert fixed == ["experiment=smoke", "n=2"]  # a plain override fixes its key
    assert format_override("model.lr", 1.2345e-05) == "model.lr=1.2345e-05"
    assert format_override("k", "a b,c") == "k='a b,c'"  # parsed back as one string
    assert search_space(params, [], OverridesParser.create())[0]["n"] == IntDistribution(1, 4)


def test_optuna_search_continues_from_its_study(tmp_path: Path, data_args: list[str]) -> None:
    import optuna
    from optuna.trial import TrialState

    search = (
        "-m",
        "hparams_search=optuna",
        *TINY,
        *data_args,
        f"runs_dir={tmp_path}",
        "run_name=search",
        "model.pool=choice(last_token,bogus)",  # a failing value: failed trials must not end the search
        "optimized_metric=validation/loss",  # the objective; hydra.sweeper.direction follows it (minimize)
    )
    first = train(*search, "hydra.sweeper.n_trials=3")
    assert first.returncode == 0, output(first)
    sweep_dir = tmp_path / "search"
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="spam_lightning", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert len(study.trials) == 3 and job_dirs(sweep_dir) == ["0", "1", "2"]
    states = [t.state for t in study.trials]
    assert TrialState.COMPLETE in states and TrialState.FAIL in states  # seed 123 draws both pools
    for t in study.trials:
        assert (t.state == TrialState.FAIL) == (t.params["model.pool"] == "bogus")
        if t.state == TrialState.COMPLETE:
            metrics = json.loads((sweep_dir / str(t.number) / "metrics.json").read_text())
            assert t.value == metrics["validation"]["loss"]
        else:
            assert t.user_attrs["error"].startswith("ConfigError: model.pool must be one of")
            assert (sweep_dir / str(t.number) / "failed.json").is_file()
    assert set(study.trials[0].params) == {
        "model.lr",
        "model.weight_decay",
        "model.trainable_layers",
        "model.pool",
        "data.batch_size",
    }

    # As if a search died during trial 3: left RUNNING in the study.
    crashed = study.ask(fixed_distributions=study.trials[0].distributions)
    assert crashed.number == 3 and study.trials[3].state == TrialState.RUNNING

    second = train(*search, "hydra.sweeper.n_trials=5")
    assert second.returncode == 0, output(second)
    study = optuna.load_study(study_name="spam_lightning", storage=storage)
    trials = study.trials
    assert len(trials) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    assert trials[3].state == TrialState.FAIL  # the crashed trial: failed, not counted...
    assert study.user_attrs["interrupted_trials"] == [3]
    assert trials[4].params == crashed.params  # ...and run again first, with its parameters
    assert trials[5].params not in [t.params for t in trials[:3]]  # a continued search draws new points
    assert job_dirs(sweep_dir) == ["0", "1", "2", "4", "5"]

    _header, *rows = table_rows((sweep_dir / "summary.md").read_text())
    assert sorted(r[0] for r in rows) == ["0", "1", "2", "4", "5"]
    for row in rows:  # failed trials are listed as failed, with their error
        state = trials[int(row[0])].state
        failed = row[-1].startswith("failed: ConfigError: model.pool")
        assert row[-1] == "ok" if state == TrialState.COMPLETE else failed
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert rows[0][0] == str(min(complete, key=lambda t: t.value).number)  # the summary's best: the lowest loss
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert f"best_value: {study.best_value}" in results and "optimized_metric: validation/loss" in results

    # The study's values are validation losses: continuing it with another metric is refused.
    other = train(*search, "hydra.sweeper.n_trials=6", "optimized_metric=validation/f1")
    assert other.returncode == 1 and "optimises optimized_metric=validation/loss, not validation/f1" in output(other)
    assert len(optuna.load_study(study_name="spam_lightning", storage=storage).trials) == 6


def test_optuna_search_refuses_a_changed_search_space() -> None:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from spam_lightning.training.sweeps import OptunaSearch, SearchMismatchError

    search = OptunaSearch()
    study = optuna.create_study()
    space = {"model.lr": FloatDistribution(1e-5, 1e-3, log=True), "data.batch_size": CategoricalDistribution([8, 16])}
    search._check_same_search(study, space, ["experiment=smoke"], "memory")  # a new study records its search
    search._check_same_search(study, dict(reversed(space.items())), ["experiment=smoke"], "memory")  # the same
    with pytest.raises(SearchMismatchError, match=r"data\.batch_size: .* in the study, None now"):
        search._check_same_search(study, {"model.lr": space["model.lr"]}, ["experiment=smoke"], "memory")
    with pytest.raises(SearchMismatchError, match=r"override 'experiment=book' only now(.|\n)*another run_name=NAME"):
        search._check_same_search(study, space, ["experiment=book"], "memory")
    # Where the verified vocabulary comes from is no part of the search: given once offline, cached after.
    search._check_same_search(study, space, ["experiment=smoke", "data.tokenizer_file=/x/gpt2.tiktoken"], "memory")


# -- multirun x DDP, torchrun nodes -------------------------------------------------------------------


RANK_ZERO_FAILS = """
import os, subprocess, sys, time
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from spam_lightning.training.ddp import ResolvedConfigLauncher

launcher = object.__new__(ResolvedConfigLauncher)  # as after _call_children_scripts: one worker rank
launcher.procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])]
launcher.env_before = {}
worker = launcher.procs[0]
observer = _ChildProcessObserver(main_pid=os.getpid(), child_processes=launcher.procs, sleep_period=1)
observer.start()  # as Lightning's launcher does
start = time.monotonic()
try:
    try:
        raise ValueError("rank 0 failed")
    finally:
        launcher.finish()
except ValueError:
    pass
print("finish took", round(time.monotonic() - start, 1), "s; worker exit code", worker.returncode, flush=True)
time.sleep(2.5)  # the observer wakes up twice: it must not kill this process for the killed worker
print("alive")
"""


def test_ddp_finish_kills_the_workers_when_rank_zero_failed() -> None:
    # Otherwise the workers may wait for rank 0 in a collective until the timeout (30 min): in a sweep, the
    # next job would wait too. And Lightning's observer, which kills the main process when a worker exits
    # non-zero, must not take the killed workers for failed ones (that would end the sweep).
    result = subprocess.run(
        [sys.executable, "-c", RANK_ZERO_FAILS], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and "alive" in result.stdout, output(result)
    took = float(result.stdout.split("finish took ")[1].split(" s")[0])
    assert took < 5 and "worker exit code -9" in result.stdout


@pytest.mark.slow
def test_multirun_with_ddp_runs_each_job_once(tmp_path: Path, data_args: list[str]) -> None:
    result = train(
        "-m",
        *TINY,
        *data_args,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "model.lr=1e-4,5e-5",
        f"runs_dir={tmp_path}",
        "run_name=mddp",
        timeout=600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, output(result)
    assert log.count("Launching 2 jobs locally") == 1  # rank 1 did not start a sweep of its own
    assert sorted(os.listdir(tmp_path)) == ["mddp"]
    assert job_dirs(tmp_path / "mddp") == ["0", "1"]
    # Two trainings of two processes each: each rank joins the process group once per job.
    assert log.count("Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2") == 2
    assert log.count("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2") == 2
    assert log.count("Initializing distributed:") == 4
    for job, lr in (("0", 1e-4), ("1", 5e-5)):
        metrics = json.loads((tmp_path / "mddp" / job / "metrics.json").read_text())
        assert metrics["world_size"] == 2
        assert OmegaConf.load(tmp_path / "mddp" / job / "config.yaml").model.lr == lr
    _header, *rows = table_rows((tmp_path / "mddp" / "summary.md").read_text())
    assert len(rows) == 2 and all(r[-1] == "ok" for r in rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_nodes(nodes: int, *args: str, timeout: int = 300) -> list[subprocess.CompletedProcess[str]]:
    """`nodes` torchrun agents of one process each on this machine, rendezvous over c10d."""
    torchrun = Path(sys.executable).with_name("torchrun")
    port = free_port()
    command = [
        str(torchrun),
        f"--nnodes={nodes}",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        "train.py",
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(nodes)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(command, proc.returncode, stdout, stderr))
    return results


@pytest.mark.slow
def test_two_torchrun_nodes_share_one_run_directory(tmp_path: Path, data_args: list[str]) -> None:
    args = (*TINY, *data_args, "trainer.accelerator=cpu", f"runs_dir={tmp_path}")
    nodes = torchrun_nodes(2, *args, "trainer.num_nodes=2", "run_name=nodes")
    log = "".join(r.stdout + r.stderr for r in nodes)
    assert all(r.returncode == 0 for r in nodes), log[-6000:]
    assert os.listdir(tmp_path) == ["nodes"]
    run_dir = tmp_path / "nodes"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert log.count("split ") == 1  # only global rank 0 prints (and writes) the results
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert "[rank: 1]" not in (run_dir / "train.log").read_text()  # rank 1's Hydra writes no log file there

    # A world size that does not match num_nodes x devices: a clear error in every process, no training.
    mismatch = torchrun_nodes(2, *args, "run_name=mismatch")
    assert all(r.returncode != 0 for r in mismatch)
    for r in mismatch:
        assert "error: the launcher started 2 processes (WORLD_SIZE=2), but trainer.num_nodes=1" in r.stderr  # one line
    assert not (tmp_path / "mismatch" / "checkpoints").exists()

    # Without a shared run_name every node would name its own run directory.
    unnamed = torchrun_nodes(1, *args, "trainer.max_epochs=1")
    assert unnamed[0].returncode != 0 and "pass run_name=NAME" in unnamed[0].stderr


def test_world_size_mismatch_is_refused_before_training(
    tmp_path: Path, data_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What torchrun --nnodes=2 --nproc_per_node=1 sets in the first process.
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "TORCHELASTIC_RUN_ID": "test"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=[*TINY, *data_args, f"run_dir={tmp_path}", "trainer.accelerator=cpu"]
        )
    with pytest.raises(WorldSizeError, match=r"WORLD_SIZE=2\), but trainer.num_nodes=1 x trainer.devices=1 is 1"):
        run(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("fail_on", "statuses", "code"),
    [
        ("any", ["ok", "failed", "ok"], 1),  # one failed job of three fails the sweep
        ("any", ["ok", "no metrics"], 0),
        ("all", ["ok", "failed"], 0),
        ("all", ["failed", "failed"], 1),
        ("never", ["failed"], 0),
    ],
)
def test_exit_code_counts_the_failed_jobs_as_fail_on_says(
    fail_on: str, statuses: list[str], code: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    results = [sweep.JobResult(str(i), tmp_path / str(i), {}, status) for i, status in enumerate(statuses)]
    monkeypatch.setattr(sweep, "_last_summary", results)
    monkeypatch.setattr(sweep, "_last_fail_on", fail_on)
    assert sweep.exit_code() == code
