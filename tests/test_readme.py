"""Every command in the ```bash blocks (and each ```python snippet) of README.md and docs/*.md is run by a test, or
is covered by another test, or cannot run here (a GPU, several machines, SLURM, a benchmark of minutes) and its page
says so beside it.

`HOW` maps each command, by its text (backslash continuations joined, a `for ...; do` ... `done; wait` loop as one
command, the trailing `# comment` removed), to one of:

- `Run(group)`: executed, in page order (README.md first, then docs/ by file name) with the other commands of its
  group, as one bash script (`set -euo pipefail`) in a fresh copy of the repository
  (`helpers.user_machine.UserMachine`: empty caches, the downloads served from 127.0.0.1), with the extra overrides
  of the constants below appended. A command that appears on two pages runs where each appears.
- `Covered(where)`: another test (or CI) runs it as users type it;
- `NotRun(reason)`: it cannot run on our machines; the page must say so beside it.

The fast tests check that table against the pages (a new command without an entry fails, a stale entry fails), the
options of the benchmark commands against their scripts, the links between the pages, and that the README's quick
start is one group. The groups are slow: they train (shortened) and run the prediction, evaluation, export and
serving tools; `quickstart` runs the README's quick start and goes on with docs/using-a-model.md.
"""

from __future__ import annotations

import ast
import json
import re
import resource
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.local_internet import LocalInternet
from helpers.user_machine import SHORT, UserMachine, serve_downloads

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 400  # issue 29: the README is a user's guide; the rest is in docs/
# The README's sections whose commands make the quick start: one group, run by test_group_quickstart.
QUICK_START_SECTIONS = ("Quick start", "Serving", "Your own data")


def pages() -> list[Path]:
    """README.md, then docs/*.md by name: the pages whose commands are checked, in the order groups run them."""
    return [README, *sorted(DOCS.glob("*.md"))]


# -- what differs from the pages' command lines: every extra override, in one place ------------------------------
# (appended to the command, so they win over the page's own values: Hydra takes the last value of a key)

# Offline: the data and the GPT-2 vocabulary are downloaded from the local server instead of UCI and OpenAI
# (UserMachine.url_overrides, filled in per machine). The 124M weights need no override: huggingface_hub reaches
# the server's Hub stand-in through HF_ENDPOINT (UserMachine.env).
URLS = "{url_overrides}"
# Offline: the Hub stand-in serves GPT-2 124M only, so a larger size starts from random weights.
RANDOM_INIT = "model.pretrained=null"
# Shorter: the plots after training predict the test split again (~30 s for 124M on a CPU); the quickstart group
# (the smoke run) makes them.
NO_PLOTS = "report=false"
# Shorter: one epoch of one batch for training, validation and each split of the final evaluation: the runs of the
# 124M model (a sweep job with trainable_layers=all trains all of it) and of GPT-2 medium. The smoke run that the
# quickstart group predicts with: 1 epoch of its 3 (~96% validation accuracy already, so predictions mean
# something).
ONE_EPOCH = "trainer.max_epochs=1"
# The resume trio counts epochs: book1 trains 1, resume=true continues it to 2, ckpt_path= from its last.ckpt to 3
# (not the page's 10).
TO_EPOCH_2 = "trainer.max_epochs=2"
TO_EPOCH_3 = "trainer.max_epochs=3"
ONE_BATCH = "trainer.limit_train_batches=1 trainer.limit_val_batches=1 trainer.limit_test_batches=1"
# Shorter: 2 texts a batch instead of 8 (of 8, 16 or 32 in the Optuna search, which this takes out of the search
# space): a 124M forward pass of 8 texts takes ~1.7 s on our CPUs, and these runs are mostly forward passes.
SMALL_BATCHES = "data.batch_size=2"
ONE_BATCH_RUN = f"{URLS} {ONE_EPOCH} {ONE_BATCH} {SMALL_BATCHES} {NO_PLOTS}"
# Shorter: Optuna studies of 1 trial instead of 20; the page's "20 more" (n_trials=40) becomes 1 more.
ONE_TRIAL = "hydra.sweeper.n_trials=1"
TWO_TRIALS = "hydra.sweeper.n_trials=2"
# Shorter, for the tiny model of experiment=smoke: SHORT (helpers/user_machine.py), one epoch of 3 training
# batches, 2 validation batches and 2 test batches per split; no plots.
SMOKE = f"{SHORT} {NO_PLOTS}"
# Shorter, for the tracker commands: they train the smoke model (what they show is the logging, not the model), SHORT,
# with the plots (logged as artifacts).
TRACKED = f"{URLS} experiment=smoke {SHORT}"
# The two-node loop: any free port instead of 29500 (CI machines are shared), the extras before its `&`.
TORCHRUN_PORT = ("127.0.0.1:29500", "127.0.0.1:{port}")
TORCHRUN_EXTRAS = ("experiment=smoke &", f"experiment=smoke {URLS} {SMOKE} &")
# `pip install -e '.[search]'` as a dry run that may not reach PyPI: installing for real would point the shared
# .venv's spam_lightning at the throwaway copy. It passes if the extra needs nothing beyond what `make install`
# installed (the dev extra includes optuna).
PIP_OFFLINE_DRY_RUN = "--dry-run --no-index --no-build-isolation"
# The quick start's server: where a user keeps it in the foreground and sends the curl lines from another terminal,
# the script starts it in the background on any free port (its output in serve.log), waits until /health answers
# 200, fetches the page (page.html), and stops it when the script ends, as Ctrl-C would; the script then fails
# unless it stopped with status 0 (and keeps the status of a command that failed before).
SERVE = "python serve.py model_dir=runs/smoke/export"
SERVE_IN_BACKGROUND = (
    SERVE,
    f"{SERVE} port={{port}} > serve.log 2>&1 &\n"
    "SERVER=$!\n"
    "trap 'status=$?; kill $SERVER 2>/dev/null; wait $SERVER || status=$?; exit $status' EXIT\n"
    "curl -sf --retry 180 --retry-delay 1 --retry-connrefused 127.0.0.1:{port}/health\n"
    "curl -sf 127.0.0.1:{port}/ > page.html",
)
SERVE_PORT = ("127.0.0.1:8000", "127.0.0.1:{port}")


@dataclass(frozen=True)
class Run:
    group: str  # the test that runs it: test_group_<group>
    extra: str = ""  # appended to the command
    replace: tuple[tuple[str, str], ...] = ()  # (text in the command, its replacement)


@dataclass(frozen=True)
class Covered:
    where: str  # "tests/FILE.py::test_name", or a CI script that runs the command as a line


@dataclass(frozen=True)
class NotRun:
    reason: str


SMOKE_TRAINING = (
    "python train.py experiment=smoke run_name=smoke "
    "data.source=../shared/data/sms_spam_collection/sms+spam+collection.zip "
    "data.tokenizer_file=../shared/assets/gpt2.tiktoken"
)
TWO_NODES = (
    "for node in 0 1; do\n"
    "torchrun --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d --rdzv_endpoint=127.0.0.1:29500 "
    "train.py trainer.accelerator=cpu trainer.num_nodes=2 run_name=two_nodes experiment=smoke &\n"
    "done; wait"
)
MAIN_JOB = "tests/test_main_job.py::"
GPU = "needs GPUs; our machines have none"
BENCHMARK = "a benchmark of minutes to hours on our machines"
CSV_COMMANDS = "tests/data/test_csv_data.py::test_readme_commands_train_and_baseline_on_a_csv_file"
LORA_ON_CPU = "python benchmarks/bench_finetune.py --model gpt2 --epochs 2 --runs b --threads 1 --weights-file random"
LORA_VARIANT = '--variant "lora=model.finetune=lora model.lr=8e-4"'

HOW: dict[str, Run | Covered | NotRun] = {
    # -- README.md ------------------------------------------------------------------------------------------------
    # Set-up
    "make train": Covered(MAIN_JOB + "test_make_train_default_recipe_through_the_downloads"),
    "make test": Covered(".ci/run"),
    'make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"': NotRun(
        "the CUDA wheel index (download.pytorch.org) cannot be reached from our machines"
    ),
    # Quick start, Serving, Your own data: the quickstart group, which goes on in docs/using-a-model.md
    SMOKE_TRAINING: Run("quickstart", ONE_EPOCH),
    """CKPT=$(python -c 'import json; print(json.load(open("runs/smoke/metrics.json"))["best_checkpoint"])')""": Run(
        "quickstart"
    ),  # also in docs/using-a-model.md
    """python predict.py ckpt_path=$CKPT 'text="WINNER!! Claim your £900 prize, call 09061701461 now"'""": Run(
        "quickstart"
    ),  # also in docs/using-a-model.md
    "python evaluate.py ckpt_path=$CKPT": Run("quickstart"),  # also in docs/using-a-model.md
    "python export.py ckpt_path=$CKPT": Run("quickstart"),
    SERVE: Run("quickstart", replace=(SERVE_IN_BACKGROUND,)),
    """curl -s 127.0.0.1:8000/predict -d '{"text": "WINNER!! Claim your £900 prize, call 09061701461 now"}'""": Run(
        "quickstart", replace=(SERVE_PORT,)
    ),
    (
        """curl -s 127.0.0.1:8000/predict -d '{"texts": ["See you at 6", "Free entry! Text WIN to 80086"], """
        """"threshold": 0.8}'"""
    ): Run("quickstart", replace=(SERVE_PORT,)),
    "curl -s 127.0.0.1:8000/info": Run("quickstart", replace=(SERVE_PORT,)),
    "curl -s 127.0.0.1:8000/health": Run("quickstart", replace=(SERVE_PORT,)),
    (
        "python train.py experiment=smoke data=csv data.path=data/sms_spam/seed-123/train.csv "
        "'data.classes=[ham,spam]' run_name=my_data"
    ): Run("quickstart", SMOKE),
    # Results (the figures are in docs/performance.md)
    "python benchmarks/bench_finetune.py --model gpt2 --epochs 5 --runs ab --threads 1": NotRun(BENCHMARK),
    "python benchmarks/bench_finetune.py --device cuda --model gpt2 --epochs 5 --runs ab --weights-file random": (
        NotRun(GPU)
    ),  # also in docs/performance.md
    # -- docs/data.md ---------------------------------------------------------------------------------------------
    "python train.py data=csv data.path=my_texts.csv": Covered(CSV_COMMANDS),
    "python baseline.py data=csv data.path=my_texts.csv": Covered(CSV_COMMANDS),
    "python baseline.py": Covered(CSV_COMMANDS),
    # -- docs/performance.md --------------------------------------------------------------------------------------
    "python benchmarks/bench_finetune.py --model gpt2 --epochs 5 --overhead-epochs 1 --threads 1 --scaling": NotRun(
        BENCHMARK
    ),
    "python benchmarks/bench_finetune.py --model gpt2-xl --epochs 5 --runs ae --book-steps 3 --threads 2": NotRun(
        BENCHMARK
    ),
    f"{LORA_ON_CPU} {LORA_VARIANT}": NotRun(BENCHMARK),
    (
        "python benchmarks/bench_finetune.py --device cuda --model gpt2 --epochs 5 --runs ab --weights-file random "
        f"{LORA_VARIANT}"
    ): NotRun(GPU),
    "python benchmarks/bench_sweep.py": NotRun(BENCHMARK),
    (
        "python benchmarks/bench_startup.py --warmup --repeats 3 --checkout /tmp/before --checkout . "
        "trainer.limit_train_batches=2 trainer.limit_val_batches=1 trainer.limit_test_batches=1"
    ): NotRun(BENCHMARK),
    (
        'python -c "import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); '
        "torch.optim.AdamW(torch.nn.Linear(2, 2).parameters()); t2 = time.perf_counter(); "
        "import spam_lightning.training.run; t3 = time.perf_counter(); print(f'torch {t1 - t0:.2f} s, the first "
        "optimizer (torch._dynamo) {t2 - t1:.2f} s, the rest of the training imports {t3 - t2:.2f} s')\""
    ): Run("training"),
    (
        "python benchmarks/bench_finetune.py --model gpt2 --epochs 5 --runs ae --book-steps 20 --threads 1 "
        "--weights-file random"
    ): NotRun(BENCHMARK),
    "python benchmarks/bench_step.py --model tiny --epochs 4 --threads 1": NotRun(BENCHMARK),
    "python benchmarks/bench_step.py --model gpt2 --epochs 3 --device cuda": NotRun(GPU),
    "bash benchmarks/gpu_wheels.sh": NotRun("downloads wheels from the package registry, for the GPU script"),
    "bash benchmarks/gpu_performance.sh": NotRun(GPU),
    "python benchmarks/bench_predict.py --model gpt2 --threads 1 --messages 64 --repeats 2 --onnxruntime": NotRun(
        BENCHMARK
    ),
    "python benchmarks/bench_long_texts.py --tokenizer-file ../shared/assets/gpt2.tiktoken": NotRun(
        "a benchmark of ~15 minutes on our 2 cores"
    ),
    "python benchmarks/bench_predict.py --device cuda --messages 1500 --batch-sizes 64,256 --precisions 32,bf16": (
        NotRun(GPU)
    ),
    "python benchmarks/bench_serve.py --smoke --clients 8 --seconds 20": NotRun("a load test of ~2 minutes"),
    "python benchmarks/bench_serve.py --random-124m --clients 8 --seconds 20": NotRun("a load test of ~2 minutes"),
    "python benchmarks/bench_serve.py --random-124m --clients 16 --seconds 12 --threads 4": NotRun(GPU),
    # -- docs/scale-out.md ----------------------------------------------------------------------------------------
    "python train.py trainer.devices=2": NotRun(GPU),
    "python train.py trainer.accelerator=cpu trainer.devices=2": Covered(MAIN_JOB + "test_ddp_over_two_cpu_processes"),
    # Grid sweeps
    "python train.py -m model.lr=1e-5,5e-5 model.trainable_layers=last_block,all run_name=grid1": Run(
        "grid", ONE_BATCH_RUN
    ),
    "python train.py -m model.lr=5e-5,1e-4,2e-4,4e-4 model.cache_dir=cache/frozen_features run_name=lr_grid": Run(
        "grid",
        ONE_BATCH_RUN,
        replace=(("model.lr=5e-5,1e-4,2e-4,4e-4", "model.lr=5e-5,1e-4"),),  # 2 jobs of the 4
    ),
    (
        "python train.py -m experiment=smoke model.lr=1e-3,5e-4 model.trainable_layers=last_block,all "
        "run_name=grid_smoke"
    ): Run("grid", f"{URLS} {SMOKE}"),
    # Optuna search
    "pip install -e '.[search]'": Run("optuna", PIP_OFFLINE_DRY_RUN),
    "python train.py -m hparams_search=optuna": Run("optuna", f"{ONE_BATCH_RUN} {ONE_TRIAL}"),  # twice on the page
    "python train.py -m hparams_search=optuna hydra.sweeper.n_trials=40": Run(
        "optuna", f"{ONE_BATCH_RUN} {TWO_TRIALS}"
    ),
    "python train.py -m hparams_search=optuna run_name=search2 experiment=smoke trainer.max_epochs=2": Run(
        "optuna", f"{URLS} {ONE_BATCH} {NO_PLOTS} {ONE_TRIAL}"
    ),
    # Multirun with DDP
    "python train.py -m experiment=smoke trainer.accelerator=cpu trainer.devices=2 model.lr=1e-4,5e-5": Run(
        "multirun_ddp", f"{URLS} {SMOKE}"
    ),
    "python train.py -m trainer.devices=4 model.lr=1e-5,5e-5": NotRun(GPU),
    # Several nodes with torchrun
    TWO_NODES: Run("torchrun", replace=(TORCHRUN_PORT, TORCHRUN_EXTRAS)),
    (
        "torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=HOST_OF_NODE_0:29500 "
        "--rdzv_id=spam1 train.py trainer.num_nodes=2 trainer.devices=4 run_name=spam1 runs_dir=/shared/runs"
    ): NotRun("needs two machines with 4 GPUs each"),
    # SLURM
    "pip install -e '.[slurm]'": NotRun(
        "hydra-submitit-launcher is in no extra that `make install` installs, and PyPI cannot be reached here"
    ),
    (
        "python train.py -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu hydra.launcher.nodes=2 "
        "hydra.launcher.tasks_per_node=4 hydra.launcher.gpus_per_node=4 hydra.launcher.cpus_per_task=8 "
        "hydra.launcher.timeout_min=240 trainer.accelerator=gpu trainer.num_nodes=2 trainer.devices=4 "
        "runs_dir=/shared/runs run_name=slurm1 model.lr=1e-5,5e-5"
    ): NotRun("needs a SLURM cluster with GPUs"),
    # -- docs/training.md -----------------------------------------------------------------------------------------
    # Installing with pip
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": NotRun(
        "the PyTorch wheel index (download.pytorch.org) cannot be reached from our machines"
    ),
    "pip install .": Covered("tests/test_library.py::test_pip_install_of_the_project_adds_no_torch_build"),
    (
        "spam-train experiment=smoke data.source=../shared/data/sms_spam_collection/sms+spam+collection.zip "
        "data.tokenizer_file=../shared/assets/gpt2.tiktoken"
    ): Covered("tests/test_library.py::test_wheel_carries_every_config_and_its_commands_run_anywhere"),
    # Recipes
    "python train.py": Covered(MAIN_JOB + "test_make_train_default_recipe_through_the_downloads"),
    (
        "python train.py experiment=smoke data.source=../shared/data/sms_spam_collection/sms+spam+collection.zip "
        "data.tokenizer_file=../shared/assets/gpt2.tiktoken"
    ): Run("training", SMOKE),
    "python train.py experiment=book": Covered(MAIN_JOB + "test_book_experiment_uses_the_caches"),
    # LoRA: appendix E from the Hub stand-in's 124M weights (small checkpoints); the commands below offline/shortened
    "python train.py experiment=book-lora": Run("training", ONE_BATCH_RUN),
    "python train.py model=gpt2-medium": Run("training", f"{RANDOM_INIT} {ONE_BATCH_RUN}"),
    "python train.py experiment=smoke --cfg job": Run("training"),
    (
        "python train.py experiment=smoke model.optimizer._target_=torch.optim.SGD model.lr=0.05 "
        "+model.optimizer.momentum=0.9"
    ): Run("training", f"{URLS} {SMOKE}"),
    # Continuing a run
    "python train.py run_name=book1": Run("continuing", ONE_BATCH_RUN),
    "python train.py run_name=book1 resume=true": Run("continuing", f"{ONE_BATCH_RUN} {TO_EPOCH_2}"),
    "python train.py ckpt_path=runs/book1/checkpoints/last.ckpt trainer.max_epochs=10": Run(
        "continuing", f"{ONE_BATCH_RUN} {TO_EPOCH_3}"
    ),
    # Configuration: debug group, early stopping
    "python train.py debug=fdr": Covered(MAIN_JOB + "test_debug_run_of_the_default_recipe_from_another_directory"),
    "python train.py experiment=smoke debug=overfit": Covered(
        "tests/test_library.py::test_debug_overfit_drives_the_training_loss_down"
    ),
    "python train.py callbacks=early_stopping callbacks.early_stopping.patience=3": Covered(
        "tests/test_library.py::test_early_stopping"
    ),
    # Experiment trackers
    "pip install -e '.[mlflow,wandb]'": NotRun(
        "full MLflow (its UI) is in no extra that `make install` installs (dev has mlflow-skinny), and PyPI cannot be "
        "reached here"
    ),
    "python train.py logger=mlflow": Run("trackers", TRACKED),
    "mlflow ui --backend-store-uri sqlite:///runs/mlflow.db": NotRun("starts a web server (and needs full MLflow)"),
    "python train.py logger=wandb run_name=wb1": Run("trackers", TRACKED),
    "wandb sync runs/wb1/wandb/offline-run-*": NotRun("needs a W&B account and the network"),
    "python train.py logger=many": Run("trackers", TRACKED),
    "python train.py 'logger=[csv,mlflow]'": Run("trackers", TRACKED),
    "python train.py logger=none": Run("trackers", TRACKED),
    # LoRA fine-tuning
    "python train.py experiment=book-lora model.pretrained=null": Covered(
        "tests/model/test_lora.py::test_book_lora_command_reports_the_books_trainable_count"
    ),
    "python train.py -m experiment=smoke model.finetune=lora model.lora.rank=4,8,16 run_name=lora_ranks": Covered(
        "tests/model/test_lora.py::test_lora_sweeps"
    ),
    (
        "python train.py -m hparams_search=optuna run_name=lora_search experiment=smoke model.finetune=lora "
        "model.trainable_layers=last_block 'model.lora.rank=choice(4,8,16)'"
    ): Covered("tests/model/test_lora.py::test_lora_sweeps"),
    # -- docs/using-a-model.md: the quickstart group, after the README's commands (runs/smoke, $CKPT, its export) ---
    r"printf 'See you at 6\nFree entry! Text WIN to 80086\n' > messages.txt": Run("quickstart"),
    """python predict.py ckpt_path=$CKPT 'text=["See you at 6","Free entry! Text WIN to 80086"]'""": Run("quickstart"),
    "python predict.py ckpt_path=$CKPT input_file=messages.txt": Run("quickstart"),
    "python predict.py ckpt_path=$CKPT input_file=data/sms_spam/seed-123/test.csv": Run("quickstart"),
    "cat messages.txt | python predict.py ckpt_path=$CKPT > predictions.jsonl": Run("quickstart"),
    (
        "python predict.py ckpt_path=$CKPT input_file=messages.txt output=predictions.jsonl threshold=0.8 device=cpu"
    ): Run("quickstart"),
    "python evaluate.py ckpt_path=$CKPT split=validation target_precision=0.995": Run("quickstart"),
    r"printf 'label,text\nham,See you at 6\nspam,Free entry! Text WIN to 80086\n' > labelled.csv": Run("quickstart"),
    "python evaluate.py ckpt_path=$CKPT data_file=labelled.csv": Run("quickstart"),
    "python evaluate.py ckpt_path=$CKPT data_file=../shared/data/sms_spam_collection/SMSSpamCollection": Run(
        "quickstart"
    ),
    (
        "python -c 'from spam_lightning.inference.report import write_training_report; "
        """print(write_training_report("runs/smoke"))'"""
    ): Run("quickstart"),
    """python predict.py model_dir=runs/smoke/export 'text="Free entry! Text WIN to 80086"'""": Run("quickstart"),
    "python evaluate.py model_dir=runs/smoke/export": Run("quickstart"),
    "python export.py ckpt_path=$CKPT overwrite=true": Run("quickstart"),
    (  # the transformers ```python snippet
        "from transformers import pipeline\n\n"
        'classifier = pipeline("text-classification", model="runs/smoke/export", truncation=True, top_k=None)\n'
        'for scores in classifier(["See you at 6", "WINNER!! Claim your prize now"]):\n'
        '    print({s["label"]: round(s["score"], 4) for s in scores})'
    ): Run("quickstart"),
    "hf auth login": NotRun("needs a Hugging Face Hub account and the network"),
    "hf upload YOUR_NAME/sms-spam-gpt2 runs/smoke/export .": NotRun("needs a Hugging Face Hub account and the network"),
    "python export.py ckpt_path=$CKPT format=onnx out_dir=runs/smoke/onnx": Run("quickstart"),
    """python predict.py model_dir=runs/smoke/onnx backend=onnxruntime 'text="Free entry! Text WIN to 80086"'""": Run(
        "quickstart"
    ),
    (  # the Predictor ```python snippet
        "from spam_lightning.inference.predictor import Predictor\n\n"
        'model = Predictor.from_dir("runs/smoke/export")  # or Predictor.from_checkpoint(ckpt_path)\n'
        'for p in model.predict(["See you at 6", "WINNER!! Claim your prize now"]):\n'
        "    print(p.label, p.positive_probability, p.truncated, p.error)"
    ): Run("quickstart"),
}

# -- parsing the pages -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    text: str  # its identity: continuations joined, a loop as one command, without its trailing comment
    language: str  # "bash" or "python"
    line: int  # where it starts in its page
    comment: str  # its trailing comments
    context: str  # the paragraph (or heading) just above its code block
    page: str = "README.md"  # its page, relative to the repository
    section: str = ""  # the heading it is under (any level), without its #s


FENCE = re.compile(r"^```(\w*)\s*$")
HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")


def page_commands(text: str, page: str = "README.md") -> list[Command]:
    """The commands of a page's ```bash blocks, and each ```python block as one, in page order."""
    lines = text.splitlines()
    commands: list[Command] = []
    section = ""
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            if heading := HEADING.match(lines[i]):
                section = heading[2]
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        context = paragraph_above(lines, i)
        if fence[1] == "bash":
            commands += bash_commands(lines[i + 1 : end], i + 2, context, page, section)
        elif fence[1] == "python":
            commands.append(Command("\n".join(lines[i + 1 : end]).strip(), "python", i + 2, "", context, page, section))
        i = end + 1
    return commands


def paragraph_above(lines: list[str], fence: int) -> str:
    i = fence - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    paragraph: list[str] = []
    while i >= 0 and lines[i].strip() and not lines[i].startswith("```"):
        paragraph.insert(0, lines[i])
        i -= 1
    return "\n".join(paragraph)


def bash_commands(block: list[str], first_line: int, context: str, page: str, section: str) -> list[Command]:
    logical: list[tuple[str, str, int]] = []  # (code, comment, line)
    parts: list[str] = []
    comments: list[str] = []
    start = 0
    for number, raw in enumerate(block, first_line):
        code, comment = split_comment(raw)
        if not parts:
            if not code:
                continue  # a blank line or a comment line
            start = number
        comments += [comment] if comment else []
        if code.endswith("\\"):
            parts.append(code[:-1].strip())
            continue
        parts.append(code.strip())
        logical.append((" ".join(p for p in parts if p), " ".join(comments), start))
        parts, comments = [], []
    assert not parts, f"{page} line {start}: a continuation with nothing after it"

    commands: list[Command] = []
    loop: list[tuple[str, str, int]] = []
    for code, comment, line in logical:
        if loop or re.match(r"(for|while) ", code):
            loop.append((code, comment, line))
            if code.startswith("done"):
                text = "\n".join(c for c, _, _ in loop)
                comment = " ".join(c for _, c, _ in loop if c)
                commands.append(Command(text, "bash", loop[0][2], comment, context, page, section))
                loop = []
            continue
        commands.append(Command(code, "bash", line, comment, context, page, section))
    assert not loop, f"{page} line {loop[0][2]}: a loop without its done"
    return commands


def split_comment(line: str) -> tuple[str, str]:
    """(the code, stripped; the comment's text) of one shell line: a `#` after a space, outside quotes."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i + 1 :].strip()
    return line.strip(), ""


def commands() -> list[Command]:
    """Every page's commands: README.md's, then docs/*.md's by file name."""
    return [
        command
        for page in pages()
        for command in page_commands(page.read_text(encoding="utf-8"), page.relative_to(REPO).as_posix())
    ]


def where(command: Command) -> str:
    return f"{command.page} line {command.line}: {command.text}"


# -- fast: the table against the pages ---------------------------------------------------------------------------


def test_every_command_has_an_entry() -> None:
    found = commands()
    missing = [where(c) for c in found if c.text not in HOW]
    stale = sorted(HOW.keys() - {c.text for c in found})
    assert not missing, "commands without an entry in tests/test_readme.py HOW:\n" + "\n".join(missing)
    assert not stale, "entries in tests/test_readme.py HOW for commands on no page:\n" + "\n".join(stale)


def test_entries_point_at_what_exists() -> None:
    for text, how in HOW.items():
        if isinstance(how, Run):
            assert f"test_group_{how.group}" in globals(), f"no test runs group {how.group!r} ({text})"
            for old, _new in how.replace:
                assert old in text, f"{old!r} is not in {text!r}"
        elif isinstance(how, Covered):
            file, _, test = how.where.partition("::")
            source = (REPO / file).read_text(encoding="utf-8")
            if test:
                assert f"def {test}(" in source, f"{how.where} does not exist ({text})"
            else:
                assert text in source.splitlines(), f"{file} does not run {text!r}"


def test_commands_not_run_say_so_on_their_page() -> None:
    """'Where a command cannot run here (a GPU, SLURM), the page says so beside it': in its comment, or in the
    paragraph or heading just above its code block."""
    silent = [
        where(c)
        for c in commands()
        if isinstance(HOW.get(c.text), NotRun) and not re.search(r"not (run|tested)", f"{c.comment}\n{c.context}", re.I)
    ]
    assert not silent, "commands our tests do not run, without a 'not run/not tested' note beside them:\n" + "\n".join(
        silent
    )


def test_benchmark_commands_use_options_their_scripts_have() -> None:
    """The benchmarks are not run (minutes to hours, some need a GPU), but a renamed script or option fails here: each
    `--option` of a `python benchmarks/...` command must be one its script's argparse parser declares."""
    wrong = []
    for command in commands():
        if not command.text.startswith("python benchmarks/"):
            continue
        script = REPO / command.text.split()[1]
        if not script.is_file():
            wrong.append(f"{where(command)} ({script.name} does not exist)")
            continue
        declared = argparse_options(script)
        wrong += [
            f"{where(command)} ({option} is not an option of {script.name})"
            for option in re.findall(r"(?<!\S)--[\w-]+", command.text)
            if option not in declared
        ]
    assert not wrong, "\n".join(wrong)


def argparse_options(script: Path) -> set[str]:
    """The `--options` given to `add_argument` calls in a script, read from its source (importing it would import
    torch: seconds)."""
    calls = [node for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))) if isinstance(node, ast.Call)]
    return {
        arg.value
        for call in calls
        if isinstance(call.func, ast.Attribute) and call.func.attr == "add_argument"
        for arg in call.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--")
    } | {"--help"}


def test_readme_is_a_short_guide_with_the_quick_start_as_one_group() -> None:
    """Issue 29: the README is a user's guide of at most ~400 lines that links every page of docs/, and its quick
    start (train, predict, evaluate, export, serve, your own CSV) runs as one group, test_group_quickstart."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, f"README.md has {len(text.splitlines())} lines"
    unlinked = [page.name for page in sorted(DOCS.glob("*.md")) if f"](docs/{page.name})" not in text]
    assert not unlinked, f"README.md links no docs page {unlinked}"
    readme = [c for c in commands() if c.page == "README.md"]
    quick = [c for c in readme if c.section in QUICK_START_SECTIONS]
    assert {c.section for c in quick} == set(QUICK_START_SECTIONS), "a quick start section is gone or has no command"
    not_run = [where(c) for c in quick if not (isinstance(how := HOW.get(c.text), Run) and how.group == "quickstart")]
    assert not not_run, "quick start commands outside the quickstart group:\n" + "\n".join(not_run)
    steps = " ".join(c.text.split()[1] for c in quick if c.text.startswith("python "))
    for step in ("train.py", "predict.py", "evaluate.py", "export.py", "serve.py"):
        assert step in steps, f"the quick start does not run {step}"
    assert any("data=csv" in c.text for c in quick), "the quick start does not train on a CSV file"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    found = set()
    inside_fence = False
    for line in text.splitlines():
        inside_fence ^= line.startswith("```")
        if not inside_fence and (heading := HEADING.match(line)):
            title = re.sub(r"[`*]", "", heading[2]).lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_links_between_pages_resolve() -> None:
    """Every relative link of README.md and docs/*.md names a file that exists and, after `#`, one of its headings:
    moving text between pages must not leave a link behind."""
    broken = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for target in LINK.findall(re.sub(r"```.*?```", "", text, flags=re.S)):
            if re.match(r"[a-z]+:", target):  # http(s), mailto
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            name = page.relative_to(REPO).as_posix()
            if not file.exists():
                broken.append(f"{name}: {target} (no such file)")
            elif anchor and anchor not in anchors(file.read_text(encoding="utf-8")):
                broken.append(f"{name}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_parsing() -> None:
    text = """
# Page

```bash
a x \\
    y   # one command  # two comments
# a comment line

for n in 0 1; do
  b --p='#not a comment' "$n" &   # first
done; wait
```

## Section two

```
not a command
```

```python
print("hi")  # kept
```
"""
    found = page_commands(text, "docs/x.md")
    assert [(c.text, c.language, c.line, c.comment, c.page, c.section) for c in found] == [
        ("a x y", "bash", 5, "one command  # two comments", "docs/x.md", "Page"),
        ("for n in 0 1; do\nb --p='#not a comment' \"$n\" &\ndone; wait", "bash", 9, "first", "docs/x.md", "Page"),
        ('print("hi")  # kept', "python", 21, "", "docs/x.md", "Section two"),
    ]
    assert anchors("# A b\n## Your own data: any CSV/TSV, `x` (y)\n```\n# not a heading\n```\n") == {
        "a-b",
        "your-own-data-any-csvtsv-x-y",
    }


# -- running a group ---------------------------------------------------------------------------------------------

MARK = "::page-command::"


@dataclass
class GroupRun:
    commands: list[Command]
    stdouts: list[str]
    machine: UserMachine

    def stdout(self, part: str) -> str:
        """The output of the command whose text is `part`, or else the one command whose text contains it (of its
        last run, if it runs twice)."""
        texts = {c.text for c in self.commands if part == c.text} or {c.text for c in self.commands if part in c.text}
        assert len(texts) == 1, f"{part!r} names {len(texts)} commands"
        return [out for c, out in zip(self.commands, self.stdouts, strict=True) if c.text in texts][-1]

    def path(self, name: str) -> Path:
        return self.machine.clone / name


def script_line(command: Command, how: Run, values: dict[str, str]) -> str:
    text = command.text
    for old, new in how.replace:
        text = text.replace(old, new.format(**values))
    if how.extra:
        text += " " + how.extra.format(**values)
    if command.language == "python":
        return f"python - <<'PYTHON'\n{text}\nPYTHON"
    return text


def run_group(machine: UserMachine, group: str, timeout: float = 1200) -> GroupRun:
    """The group's commands in page order, as one bash script in the machine's copy of the repository; fails
    naming the first command that failed."""
    selected = [(c, how) for c in commands() if isinstance(how := HOW.get(c.text), Run) and how.group == group]
    assert selected, f"no command in group {group!r}"
    values = {"url_overrides": machine.url_overrides, "port": str(free_port())}
    lines = ["set -euo pipefail"]
    for i, (command, how) in enumerate(selected):  # a marker line before each command's output, on both streams
        marker = f"printf '\\n{MARK}{i}\\n'"
        lines += [f"{marker}; {marker} >&2", script_line(command, how, values)]
    script = "\n".join(lines) + "\n"

    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    result = machine.sh(script, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"group {group}: {time.monotonic() - start:.0f} s wall, {cpu:.0f} s CPU")

    if result.returncode != 0:
        started = [int(n) for n in re.findall(rf"^{MARK}(\d+)$", result.stderr, re.M)]
        failed = selected[started[-1]][0] if started else None
        at = where(failed) if failed else "before the first command"
        raise AssertionError(
            f"exit status {result.returncode} at {at}\nscript:\n{script}\n"
            f"stdout (end):\n{result.stdout[-4000:]}\nstderr (end):\n{result.stderr[-8000:]}"
        )
    stdouts = [""] * len(selected)
    pieces = re.split(rf"^{MARK}(\d+)\n", result.stdout, flags=re.M)
    for index, out in zip(pieces[1::2], pieces[2::2], strict=True):
        stdouts[int(index)] = out
    return GroupRun([c for c, _ in selected], stdouts, machine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def internet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalInternet]:
    weights = tmp_path_factory.mktemp("served")
    with LocalInternet() as server:
        serve_downloads(server, weights)
        yield server
    shutil.rmtree(weights, ignore_errors=True)


@pytest.fixture
def machine(tmp_path: Path, internet: LocalInternet) -> Iterator[UserMachine]:
    """A fresh copy of the repository with empty caches; removed after the test (checkpoints of 124M are large)."""
    yield UserMachine(tmp_path, internet)
    shutil.rmtree(tmp_path, ignore_errors=True)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summary_rows(sweep_dir: Path) -> list[list[str]]:
    """The job rows of the sweep's summary.md (without the header and alignment rows)."""
    rows = [line.strip("|").split(" | ") for line in (sweep_dir / "summary.md").read_text().splitlines()]
    return [[cell.strip() for cell in row] for row in rows if row[0].strip().isdigit()]


def job_dirs(sweep_dir: Path) -> list[str]:
    return sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and (p / "metrics.json").is_file())


def test_a_failing_command_fails_its_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = ((1, "echo one"), (2, "false"), (3, "echo three"))
    fake = [Command(text, "bash", line, "", "", "docs/x.md") for line, text in steps]
    monkeypatch.setattr(sys.modules[__name__], "commands", lambda: fake)
    for command in fake:
        monkeypatch.setitem(HOW, command.text, Run("fake"))
    with LocalInternet() as nothing_served:
        machine = UserMachine(tmp_path, nothing_served)
        with pytest.raises(AssertionError, match=r"exit status 1 at docs/x.md line 2: false\n") as failed:
            run_group(machine, "fake")
    assert "echo three" in str(failed.value)  # the script is shown, and
    assert "three\n" not in str(failed.value).split("stdout (end):")[1]  # nothing ran after the failure


# -- the groups (slow) -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_group_training(machine: UserMachine) -> None:
    done = run_group(machine, "training")
    runs = machine.run_dirs()
    assert len(runs) == 4, runs  # the smoke run, the SGD smoke run, GPT-2 medium and book-lora; --cfg job only prints
    configs = [(run / "config.yaml").read_text() for run in runs]
    assert sum("arch: gpt2-medium\n" in c for c in configs) == 1, configs
    assert sum("finetune: lora\n" in c for c in configs) == 1, configs
    assert sum("_target_: torch.optim.SGD\n" in c and "momentum: 0.9\n" in c for c in configs) == 1, configs
    for run in runs:
        assert metrics(run)["global_step"] in (1, 3)
    assert "trainable parameters: 2,666,528 of 127,107,874" in done.stdout("experiment=book-lora")
    assert "emb_dim: 64" in done.stdout("--cfg job") and "run_name:" in done.stdout("--cfg job")
    imports = done.stdout("import spam_lightning.training.run")  # docs/performance.md's import times
    assert re.fullmatch(
        r"torch [\d.]+ s, the first optimizer \(torch._dynamo\) [\d.]+ s, the rest .* [\d.]+ s", imports.strip()
    ), imports


@pytest.mark.slow
def test_group_trackers(machine: UserMachine) -> None:
    from helpers.wandb_offline import offline_runs
    from mlflow.tracking import MlflowClient

    run_group(machine, "trackers")
    runs = machine.clone / "runs"
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("spam_lightning")
    mlflow_runs = client.search_runs([experiment.experiment_id])
    assert len(mlflow_runs) == 3  # logger=mlflow, many, [csv,mlflow]
    for mlrun in mlflow_runs:
        assert mlrun.info.status == "FINISHED" and "test/accuracy" in mlrun.data.metrics
        assert "model.lr" in mlrun.data.params
        assert {"metrics.json", "loss.png"} <= {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    wandb_runs = [r for run in machine.run_dirs() for r in offline_runs(run)]
    assert len(wandb_runs) == 2 and all(r.exited and "test/accuracy" in r.summary for r in wandb_runs)  # wandb, many
    assert offline_runs(runs / "wb1")[0].name == "wb1"
    run_dirs = [run for run in machine.run_dirs() if (run / "metrics.json").is_file()]
    assert len(run_dirs) == 5 and sum(not (run / "logs").exists() for run in run_dirs) == 1  # logger=none


@pytest.mark.slow
def test_group_quickstart(machine: UserMachine) -> None:
    """The README's quick start as a user types it (train, predict, evaluate, export, serve and the curl lines, a CSV
    file), then docs/using-a-model.md's commands on the same run."""
    done = run_group(machine, "quickstart")
    smoke = done.path("runs/smoke")
    trained = metrics(smoke)
    assert trained["epochs"] == 1 and trained["test"]["accuracy"] >= 0.85
    for plot in ("loss.png", "accuracy.png", "confusion_matrix.png", "pr_curve.png"):
        assert (smoke / plot).stat().st_size > 1000, plot

    def texts(part: str) -> list[str]:
        return [p["text"] for p in jsonl(done.stdout(part))]

    winner_text = "WINNER!! Claim your £900 prize, call 09061701461 now"
    [winner] = jsonl(done.stdout("""python predict.py ckpt_path=$CKPT 'text="WINNER"""))
    assert winner["text"] == winner_text and winner["label"] == "spam"
    # Served: the page, and the same answer as predict.py's for the same text.
    assert "<title>SMS spam classifier</title>" in done.path("page.html").read_text(encoding="utf-8")
    served = json.loads(done.stdout("""curl -s 127.0.0.1:8000/predict -d '{"text\""""))
    assert served["label"] == "spam"
    assert served["positive_probability"] == pytest.approx(winner["positive_probability"], abs=1e-6)
    batch = json.loads(done.stdout("""-d '{"texts\""""))["predictions"]
    assert [p["text"] for p in batch] == ["See you at 6", "Free entry! Text WIN to 80086"]
    assert all((p["label"] == "spam") == (p["positive_probability"] > 0.8) for p in batch)
    assert json.loads(done.stdout("curl -s 127.0.0.1:8000/info"))["model"]["preprocessing"]["positive_class"] == "spam"
    assert done.stdout("curl -s 127.0.0.1:8000/health").strip() == "ok"
    assert "Traceback" not in done.path("serve.log").read_text(encoding="utf-8")
    # Your own data: the SMS training split as a CSV file, its labels the ids of the classes named.
    own = metrics(done.path("runs/my_data"))
    assert own["labels"] == ["ham", "spam"] and own["positive_class"] == "spam"

    messages = ["See you at 6", "Free entry! Text WIN to 80086"]
    assert texts("'text=[") == messages
    assert texts("python predict.py ckpt_path=$CKPT input_file=messages.txt") == messages
    assert len(texts("input_file=data/sms_spam/seed-123/test.csv")) == 300
    predictions = jsonl(done.path("predictions.jsonl").read_text())  # the last command writing it: threshold 0.8
    assert [p["text"] for p in predictions] == messages
    assert all((p["label"] == "spam") == (p["positive_probability"] > 0.8) for p in predictions)

    for out_dir, n in (("test", 300), ("validation", 149), ("labelled", 2), ("SMSSpamCollection", 5574)):
        evaluation = json.loads((smoke / "evaluation" / out_dir / "evaluation.json").read_text())
        assert evaluation["n"] == n, out_dir
    test_eval = json.loads((smoke / "evaluation" / "test" / "evaluation.json").read_text())
    assert test_eval["metrics"]["accuracy"] == pytest.approx(trained["test"]["accuracy"])
    assert "loss.png" in done.stdout("write_training_report")

    export = smoke / "export"  # written by the quick start, then again with overwrite=true
    assert {p.name for p in export.iterdir()} >= {"model.safetensors", "config.json", "gpt2.tiktoken"}
    assert texts("model_dir=runs/smoke/export 'text=") == ["Free entry! Text WIN to 80086"]
    assert json.loads(done.path("evaluations/smoke/export/test/evaluation.json").read_text())["n"] == 300
    snippet = done.stdout("from spam_lightning.inference.predictor import Predictor").split()
    assert snippet[0] in ("ham", "spam") and len(snippet) == 8
    assert (smoke / "onnx" / "model.onnx").is_file() and (smoke / "onnx" / "config.json").is_file()
    from_onnx = jsonl(done.stdout("model_dir=runs/smoke/onnx backend=onnxruntime"))
    from_torch = jsonl(done.stdout("model_dir=runs/smoke/export 'text="))
    assert [p["text"] for p in from_onnx] == ["Free entry! Text WIN to 80086"]
    assert from_onnx[0]["positive_probability"] == pytest.approx(from_torch[0]["positive_probability"], abs=1e-5)
    out = done.stdout("from transformers import pipeline")
    scores = [ast.literal_eval(line) for line in out.splitlines() if line.startswith("{")]
    assert len(scores) == 2 and all(set(s) == {"ham", "spam"} and abs(sum(s.values()) - 1) < 1e-3 for s in scores), out


@pytest.mark.slow
def test_group_continuing(machine: UserMachine) -> None:
    run_group(machine, "continuing")
    book1 = machine.clone / "runs" / "book1"
    # One batch an epoch: book1 ran 1 epoch and resumed to 2; the ckpt_path run continued from there to 3.
    assert (metrics(book1)["epochs"], metrics(book1)["global_step"]) == (2, 2)
    assert "resuming from" in (book1 / "train.log").read_text()
    [other] = [run for run in machine.run_dirs() if run.name != "book1"]
    assert (metrics(other)["epochs"], metrics(other)["global_step"]) == (3, 3)


@pytest.mark.slow
def test_group_grid(machine: UserMachine) -> None:
    run_group(machine, "grid")
    for name in ("grid1", "grid_smoke"):
        sweep = machine.clone / "runs" / name
        assert job_dirs(sweep) == ["0", "1", "2", "3"], name
        rows = summary_rows(sweep)
        assert sorted(r[0] for r in rows) == ["0", "1", "2", "3"] and all(r[-1] == "ok" for r in rows), rows
        assert (sweep / "summary.csv").is_file() and (sweep / "multirun.yaml").is_file()
    lr_grid = machine.clone / "runs" / "lr_grid"
    assert job_dirs(lr_grid) == ["0", "1"] and all(r[-1] == "ok" for r in summary_rows(lr_grid))
    (trunk,) = (p for p in (machine.clone / "cache" / "frozen_features").iterdir() if p.is_dir())  # written by job 0
    assert list(trunk.glob("*.safetensors")), list(trunk.iterdir())
    assert "texts read from" in (lr_grid / "1" / "train.log").read_text()  # job 1 read it


@pytest.mark.slow
def test_group_optuna(machine: UserMachine) -> None:
    import optuna

    done = run_group(machine, "optuna")
    # Nothing but this package itself would be installed: the search extra is in what `make install` installed.
    would_install = [line for line in done.stdout("'.[search]'").splitlines() if line.startswith("Would install")]
    assert would_install == ["Would install spam_lightning-0.1.0"], done.stdout("'.[search]'")

    for name, n_trials in (("optuna", 2), ("search2", 1)):  # optuna: 1, again 1 (nothing left), then 2
        sweep = machine.clone / "runs" / name
        study = optuna.load_study(study_name="spam_lightning", storage=f"sqlite:///{sweep / 'optuna.db'}")
        assert len(study.trials) == n_trials, name
        rows = summary_rows(sweep)  # a failed trial does not fail the command (fail_on: all): it shows here
        assert [r[-1] for r in rows] == ["ok"] * n_trials, rows
        assert (sweep / "optimization_results.yaml").is_file()
    [trial] = job_dirs(machine.clone / "runs" / "search2")
    assert metrics(machine.clone / "runs" / "search2" / trial)["epochs"] == 2  # the command's own max_epochs


@pytest.mark.slow
def test_group_multirun_ddp(machine: UserMachine) -> None:
    run_group(machine, "multirun_ddp")
    [sweep] = machine.run_dirs()
    assert job_dirs(sweep) == ["0", "1"]
    assert [metrics(sweep / job)["world_size"] for job in ("0", "1")] == [2, 2]
    assert [r[-1] for r in summary_rows(sweep)] == ["ok", "ok"]


@pytest.mark.slow
def test_group_torchrun(machine: UserMachine) -> None:
    run_group(machine, "torchrun")
    # `wait` does not report the loop's failures: the run directory shows whether both nodes trained.
    [run] = machine.run_dirs()
    assert run.name == "two_nodes" and metrics(run)["world_size"] == 2
