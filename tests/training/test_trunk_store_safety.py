"""The trunk cache on disk deletes only what it can prove it wrote (issue 27): pruning, the clean command, a corrupt
segment's check and stale temporary files leave anything else alone and name it; a cache folder that is the runs
folder, the project folder, a parent of either or the home folder is refused. And every component of a trunk's key
changes the key (issue 28). Small tensors, no training: fast."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.smoke import train_cli

import spam_lightning.training.feature_cache as trunk_store
from spam_lightning.errors import ConfigError
from spam_lightning.training.feature_cache import TrunkStore, check_cache_dir, list_trunks, tensors_digest, trunk_key
from spam_lightning.training.module import SpamClassifier

TENSORS = [torch.arange(6.0).reshape(2, 3), torch.ones(4)]  # a stand-in for a model's frozen tensors


def new_trunk(root: Path, seed: float, max_bytes: int | None = None, age: float = 0.0) -> TrunkStore:
    """A trunk of its own (its tensors differ by `seed`) holding one segment, last used `age` seconds ago."""
    tensors = [t + seed for t in TENSORS]
    store = TrunkStore(root, *trunk_key(tensors, False, torch.device("cpu")), max_bytes)
    store.load_new()
    store.write({f"text {seed}".encode(): torch.full((3, 4), seed)})
    used = store.folder / "last_used"
    os.utime(used, (used.stat().st_mtime - age,) * 2)
    return store


def users_files(root: Path) -> dict[Path, str]:
    """Files a user keeps in and beside the cache, some with names or places that look like the cache's."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        root / "photos" / "a.txt": "a photo",
        root / "notes.txt": "notes",
        root / ("a" * 64) / "data.bin": "key-shaped folder without trunk.json",
        root / ("b" * 64) / "trunk.json": '{"format": "1"}',  # key-shaped, but not the description we write
        root / "trunk.json": "{}",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


def assert_untouched(files: dict[Path, str]) -> None:
    for path, text in files.items():
        assert path.read_text() == text, path


# -- deleting: only proven trunks, only our own files in them ----------------------------------------------------


def test_pruning_deletes_only_the_trunks_the_cache_wrote(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cache"
    theirs = users_files(root)
    old = new_trunk(root, 1.0, age=3600)
    inside = {old.folder / "mine.txt": "a user's file in a trunk", old.folder / "model.safetensors": "weights"}
    for path, text in inside.items():
        path.write_text(text)
    with caplog.at_level(logging.INFO, logger="spam_lightning"):
        newest = new_trunk(root, 2.0, max_bytes=1)  # over the limit at once: the old trunk goes
        newest.write({b"another text": torch.zeros(2, 4)})  # a second prune
    assert_untouched({**theirs, **inside})
    assert [t["path"] for t in list_trunks(root)] == [newest.folder]
    assert sorted(p.name for p in old.folder.iterdir()) == ["mine.txt", "model.safetensors"]  # ours went
    assert not (root / f"{old.folder.name}.lock").exists()
    assert f"removed trunk {old.folder.name}" in caplog.text
    warnings = [r.message for r in caplog.records if "left alone what it did not write" in r.message]
    assert len(warnings) == 1  # once, not per prune
    for name in ("photos", "notes.txt", "a" * 64, "b" * 64, "trunk.json", f"{old.folder.name}/mine.txt"):
        assert name in warnings[0]


def test_an_emptied_trunk_folder_is_removed(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    old = new_trunk(root, 1.0, age=3600)
    new_trunk(root, 2.0, max_bytes=1)
    assert not old.folder.exists() and len(list_trunks(root)) == 1


def test_the_corrupt_segment_check_never_deletes_a_users_file(tmp_path: Path) -> None:
    store = new_trunk(tmp_path / "cache", 1.0)
    users = store.folder / "weights.safetensors"  # not named by a sha256: not a segment of ours
    users.write_bytes(b"not what its name says")
    rows = TrunkStore(store.root, store.folder.name, {}, None).load_new()
    assert users.read_bytes() == b"not what its name says" and list(rows) == [b"text 1.0"]


def test_the_clean_command_lists_and_deletes_only_trunks(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    theirs = users_files(root)
    store = new_trunk(root, 1.0)
    command = [sys.executable, "-m", "spam_lightning.training.feature_cache", str(root)]
    listed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "1 trunks" in listed and f"not the cache's, left alone: {'a' * 64}, {'b' * 64}, notes.txt" in listed
    cleaned = subprocess.run([*command, "--clean"], capture_output=True, text=True, check=True).stdout
    assert "freed" in cleaned and list_trunks(root) == [] and not store.folder.exists()
    assert_untouched(theirs)


# -- temporary files of killed writers ----------------------------------------------------------------------------

WRITER = """
import json, sys, time
import spam_lightning.training.feature_cache as trunk_store
import torch

store = trunk_store.TrunkStore(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), None)
save = trunk_store.save_file

def save_and_hang(*args, **kwargs):
    save(*args, **kwargs)
    print("writing", flush=True)
    time.sleep(600)

trunk_store.save_file = save_and_hang
store.write({b"text": torch.ones(3, 4)})
"""


def test_stale_temporaries_go_and_a_live_writers_stays(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cache"
    key_, info = trunk_key([t + 5 for t in TENSORS], False, torch.device("cpu"))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), key_, json.dumps(info)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        (live,) = (root / key_).glob(".segment-*.tmp")
        stale = new_trunk(root, 1.0).folder / ".segment-killed.tmp"  # a killed job's: no one holds its trunk's lock
        stale.write_bytes(b"half a segment")
        with caplog.at_level(logging.INFO, logger="spam_lightning"):
            store = new_trunk(root, 2.0, max_bytes=2**30)  # a store opens
        assert not stale.exists() and live.exists()
        assert f"removed 1 temporary file(s) left by an interrupted job in {stale.parent}" in caplog.text
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert live.exists()  # the writer was killed: its temporary file is stale now
    store.prune()
    assert not live.exists() and (root / key_ / "trunk.json").exists()


# -- cache folders that are no place for a cache ------------------------------------------------------------------


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A home, a project and a runs folder apart from each other (so each check is seen alone)."""
    found = {"home": tmp_path / "h" / "home", "project": tmp_path / "p" / "project", "runs": tmp_path / "r" / "runs"}
    for folder in found.values():
        folder.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(found["home"]))
    monkeypatch.setenv("SPAM_LIGHTNING_ROOT", str(found["project"]))
    return found


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ("runs", "is the runs folder (runs_dir)"),
        ("r", "holds the runs folder (runs_dir)"),
        ("project", "is the project folder"),
        ("p", "holds the project folder"),
        ("home", "is the home folder"),
        ("h", "holds the home folder"),
        ("link", "is the home folder"),  # a link to it
        ("/", "holds the runs folder"),
    ],
)
def test_a_cache_folder_that_holds_more_than_the_cache_is_refused(
    places: dict[str, Path], tmp_path: Path, cache: str, message: str
) -> None:
    (tmp_path / "link").symlink_to(places["home"])
    folder = {"r": tmp_path / "r", "p": tmp_path / "p", "h": tmp_path / "h", "link": tmp_path / "link", "/": Path("/")}
    path = places.get(cache) or folder[cache]
    with pytest.raises(ConfigError, match=re.escape(f"model.cache_dir={path} {message}")):
        check_cache_dir(path, places["runs"])


def test_a_cache_folder_of_its_own_is_accepted(places: dict[str, Path], tmp_path: Path) -> None:
    for folder in (places["project"] / "cache" / "frozen_features", places["runs"].parent / "cache", tmp_path / "c"):
        check_cache_dir(folder, places["runs"])


@pytest.mark.parametrize("place", ["home", "project"])
def test_the_model_refuses_such_a_cache_folder(places: dict[str, Path], place: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"model.cache_dir={places[place]} is the {place} folder")):
        SpamClassifier.from_options(
            arch={"emb_dim": 32, "n_layers": 2, "n_heads": 2, "context_length": 64}, pretrained=None,
            trainable_layers=1, cache_dir=str(places[place]),
        )  # fmt: skip


def test_train_refuses_the_runs_folder_as_cache_before_writing(tmp_path: Path, sms_zip: Path, tokenizer_file: str):
    """The issue's repro: with runs_dir and cache_dir the same folder, pruning deleted an earlier run and the run."""
    earlier = {tmp_path / "runs" / "earlier" / name: name for name in ("config.yaml", "metrics.json")}
    for path, text in earlier.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    done = train_cli(
        tmp_path, f"model.cache_dir={tmp_path / 'runs'}", "model.cache_max_gb=0.000001",
        "model.trainable_layers=last_block", sms_zip=sms_zip, tokenizer_file=tokenizer_file,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    runs = tmp_path / "runs"
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: model.cache_dir={runs} is the runs folder (runs_dir) {runs}: expected")
    assert_untouched(earlier)
    assert sorted(p.name for p in runs.iterdir()) == ["earlier"]  # the refused run left nothing


# -- the key: every component changes it --------------------------------------------------------------------------


def key(tensors: list[torch.Tensor] = TENSORS, keep_padding: bool = False, device: str = "cpu", content=None) -> str:
    return trunk_key(tensors, keep_padding, torch.device(device), content)[0]


def test_the_key_is_the_digest_of_the_tensors_content() -> None:
    assert key(content=tensors_digest(TENSORS)) == key()  # the digest given (computed once) is the one it computes
    assert key(content="0" * 64) != key(content="1" * 64)


def test_the_digest_covers_each_tensors_bytes_shape_dtype_and_place() -> None:
    changed = TENSORS[0].clone()
    changed[1, 2] += 1
    digests = {
        tensors_digest(TENSORS),
        tensors_digest([changed, TENSORS[1]]),
        tensors_digest([TENSORS[0].reshape(3, 2), TENSORS[1]]),
        tensors_digest([TENSORS[0], TENSORS[1].view(torch.int32)]),
        tensors_digest(TENSORS[::-1]),
        tensors_digest(TENSORS[:1]),
    }
    assert len(digests) == 6
    assert tensors_digest([t.clone() for t in TENSORS]) == tensors_digest(TENSORS)


def test_the_format_changes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = key()
    monkeypatch.setattr(trunk_store, "FORMAT", "2")
    assert key() != before


def test_keeping_the_padding_changes_the_key() -> None:
    assert key(keep_padding=True) != key(keep_padding=False)


def test_the_device_type_changes_the_key() -> None:
    assert key(device="cuda") != key(device="cpu")  # a device object needs no GPU


def test_autocast_and_its_dtype_change_the_key() -> None:
    keys = [key()]
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            keys.append(key())
    assert len(set(keys)) == 3


def test_each_tensors_shape_and_dtype_change_the_key() -> None:
    """The same bytes (and the same content digest passed) in another shape or dtype: another key."""
    content = tensors_digest(TENSORS)
    reshaped = [TENSORS[0].reshape(3, 2), TENSORS[1]]
    retyped = [TENSORS[0], TENSORS[1].view(torch.int32)]
    assert len({key(content=content), key(reshaped, content=content), key(retyped, content=content)}) == 3


def test_the_tensors_bytes_and_order_change_the_key() -> None:
    first, second = torch.zeros(3), torch.ones(3)
    changed = first.clone()
    changed[1] = 1e-7
    assert len({key([first, second]), key([second, first]), key([changed, second])}) == 3
