"""Shared test fixtures: the real UCI data and GPT-2 vocabulary under ../shared (no network)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPAM_LIGHTNING_SHARED", REPO.parent / "shared"))
SMS_DIR = SHARED / "data" / "sms_spam_collection"
SMS_ZIP = SMS_DIR / "sms+spam+collection.zip"
SMS_TSV = SMS_DIR / "SMSSpamCollection"
TOKENIZER_FILE = SHARED / "assets" / "gpt2.tiktoken"


# Tests never use the user's cache folder (the GPT-2 vocabulary): an empty one for the session, which the
# subprocesses the tests start inherit.
_CACHE = tempfile.TemporaryDirectory(prefix="spam_lightning_cache_")
os.environ["SPAM_LIGHTNING_CACHE"] = _CACHE.name


@pytest.fixture(scope="session")
def sms_zip() -> Path:
    assert SMS_ZIP.is_file(), f"missing {SMS_ZIP}; set SPAM_LIGHTNING_SHARED to the shared/ folder"
    return SMS_ZIP


@pytest.fixture(scope="session")
def sms_tsv() -> Path:
    assert SMS_TSV.is_file(), f"missing {SMS_TSV}; set SPAM_LIGHTNING_SHARED to the shared/ folder"
    return SMS_TSV


@pytest.fixture(scope="session")
def tokenizer_file() -> str:
    assert TOKENIZER_FILE.is_file(), f"missing {TOKENIZER_FILE}"
    return str(TOKENIZER_FILE)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> str:
    """The SMS splits (seed 123), prepared once from the shared zip, for tests that only read them."""
    from spam_lightning.data.modules import SmsSpamDataModule

    path = str(tmp_path_factory.mktemp("sms"))
    SmsSpamDataModule(source=str(sms_zip), data_dir=path, tokenizer_file=tokenizer_file).prepare_data()
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """The test models are tiny: one intra-op thread is as fast, and two threads per process spin against
    each other (and against the DDP worker processes some tests start) on a 2-core machine."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smoke_source(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> Path:
    """The default smoke run (helpers.smoke.train_smoke: tiny model, one epoch of 20 steps on the real data), trained
    once per test worker; modules take a copy of it (helpers.smoke.copy_smoke) instead of training their own."""
    from helpers.smoke import train_smoke  # here: importing it at collection would import training for every test

    tmp = tmp_path_factory.mktemp("smoke_source")
    train_smoke(tmp, sms_zip, tokenizer_file)
    return tmp
