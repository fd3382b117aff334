"""What checkpoints hold: the preprocessing record, and only what training changed when the frozen weights can be
read again (their provenance checked by sha256); the one reader refuses older and foreign checkpoints clearly.

A tiny GPT-2-shaped weights file in the Hub's layout stands in for OpenAI's weights (`model.pretrained=FILE`), with
the book's trainable part (last block, final norm, head), so the frozen-feature cache is on as in the defaults.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.local_internet import write_gpt2_safetensors
from helpers.smoke import compose_cfg, final_weights, smoke_cfg, train_cli, train_smoke
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from spam_lightning.errors import CheckpointError, ConfigError
from spam_lightning.files import DiskFullError, atomic_write, file_sha256
from spam_lightning.inference.checkpoint import RECORD_KEY, load_trained, read_checkpoint, record_sha256
from spam_lightning.inference.export import export_checkpoint
from spam_lightning.inference.predictor import Predictor
from spam_lightning.model.gpt import make_config
from spam_lightning.model.weights import convert_hf_state_dict, read_safetensors
from spam_lightning.training.checkpoints import AtomicCheckpointIO
from spam_lightning.training.run import run

TRAINABLE_PREFIXES = ("net.gpt.trf_blocks.1.", "net.gpt.final_norm.", "net.gpt.out_head.")  # tiny: 2 blocks


def tiny_weights(path: Path, seed: int) -> Path:
    return write_gpt2_safetensors(path, make_config(compose_cfg("train", "experiment=smoke").model.arch), seed=seed)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> dict:
    """A one-epoch run from a tiny pretrained weights file: small checkpoints."""
    tmp = tmp_path_factory.mktemp("small")
    weights = tiny_weights(tmp / "weights" / "model.safetensors", seed=1)
    overrides = (f"model.pretrained={weights}", "model.trainable_layers=last_block")
    metrics = train_smoke(tmp, sms_zip, tokenizer_file, *overrides)
    return {"tmp": tmp, "weights": weights, "metrics": metrics, "overrides": overrides}


def test_checkpoints_hold_only_what_training_changed(small: dict) -> None:
    checkpoints = small["tmp"] / "run" / "checkpoints"
    best, last = Path(small["metrics"]["best_checkpoint"]), checkpoints / "last.ckpt"
    for path in (best, last):
        ckpt = read_checkpoint(path)
        assert ckpt["state_dict"] and all(k.startswith(TRAINABLE_PREFIXES) for k in ckpt["state_dict"]), path
        record = ckpt[RECORD_KEY]
        assert record["frozen_weights"] == {
            "pretrained": str(small["weights"]),
            "revision": None,
            "sha256": file_sha256(small["weights"]),
        }
        assert record["preprocessing"]["labels"] == ["ham", "spam"]
        assert record["preprocessing"]["pad_length"] is None and record["net"]["pool"] == "last_token"
        assert record["data"]["seed"] == 123 and set(record["data"]["splits_sha256"]) == {
            "train.csv",
            "validation.csv",
            "test.csv",
        }
    assert "optimizer_states" not in read_checkpoint(best)  # the model to use: weights only
    assert "optimizer_states" in read_checkpoint(last)  # the run to continue
    assert best.stat().st_size < last.stat().st_size

    # The whole network comes back: frozen tensors from the weights file, trained ones from the checkpoint.
    model = load_trained(best)
    full = model.net.state_dict()
    pretrained = convert_hf_state_dict(read_safetensors(small["weights"]), model.net.gpt.cfg)
    assert torch.equal(full["gpt.tok_emb.weight"], pretrained["tok_emb.weight"])
    assert torch.equal(full["gpt.trf_blocks.0.att.W_query.weight"], pretrained["trf_blocks.0.att.W_query.weight"])
    trained = read_checkpoint(best)["state_dict"]
    assert all(torch.equal(full[k.removeprefix("net.")], v) for k, v in trained.items())
    assert not torch.equal(full["gpt.trf_blocks.1.ff.layers.0.weight"], pretrained["trf_blocks.1.ff.layers.0.weight"])


def test_export_of_a_small_checkpoint_is_self_contained(small: dict, tmp_path: Path) -> None:
    best = small["metrics"]["best_checkpoint"]
    export_checkpoint(best, tmp_path / "export", format="spam_lightning")  # our layout: bit-exact (hf folds the bias)
    from_ckpt, from_dir = Predictor.from_checkpoint(best, device="cpu"), Predictor.from_dir(tmp_path / "export")
    texts = ["Free entry! Text WIN to 80086", "See you at 6", "URGENT call now"]
    assert from_dir.positive_probabilities(texts)[0] == from_ckpt.positive_probabilities(texts)[0]
    config = json.loads((tmp_path / "export" / "spam_lightning.json").read_text())
    assert config["training"]["frozen_weights"]["sha256"] == file_sha256(small["weights"])

    # Other bytes in the weights file: the checkpoint is refused; the export (all weights) still works.
    tiny_weights(small["weights"], seed=2)
    try:
        with pytest.raises(CheckpointError, match="sha256"):
            Predictor.from_checkpoint(best)
        assert (
            from_dir.positive_probabilities(texts)[0]
            == Predictor.from_dir(tmp_path / "export").positive_probabilities(texts)[0]
        )
    finally:
        tiny_weights(small["weights"], seed=1)


def test_continuing_on_other_frozen_weights_is_refused(
    small: dict, tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    last = small["tmp"] / "run" / "checkpoints" / "last.ckpt"
    other = tiny_weights(tmp_path / "other.safetensors", seed=3)
    cfg = smoke_cfg(
        tmp_path / "run",
        small["tmp"] / "data",
        sms_zip,
        tokenizer_file,
        f"model.pretrained={other}",
        "model.trainable_layers=last_block",
        f"ckpt_path={last}",
        "trainer.max_epochs=2",
    )
    with pytest.raises(CheckpointError, match="frozen weights"):
        run(cfg)


def test_continuing_from_a_weights_only_checkpoint_is_refused(small: dict, cfg_factory_small) -> None:
    with pytest.raises(ConfigError, match="weights only"):
        run(cfg_factory_small(f"ckpt_path={small['metrics']['best_checkpoint']}"))


@pytest.fixture
def cfg_factory_small(small: dict, tmp_path: Path, sms_zip: Path, tokenizer_file: str):
    def factory(*overrides: str):
        return smoke_cfg(
            tmp_path / "run", small["tmp"] / "data", sms_zip, tokenizer_file, *small["overrides"], *overrides
        )

    return factory


def test_older_checkpoints_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"gpt.tok_emb.weight": torch.zeros(2, 2)}, "hyper_parameters": {"arch": "gpt2"}}, old)
    with pytest.raises(CheckpointError, match="older spam_lightning"):
        Predictor.from_checkpoint(old)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a spam_lightning checkpoint"):
        load_trained(foreign)


# finetune: (overrides, what the checkpoints hold). LoRA: the adapters, and the new head's tensors.
FINETUNES = {
    "last_block": (("model.trainable_layers=last_block",), lambda key: key.startswith(TRAINABLE_PREFIXES)),
    "lora": (
        ("model.finetune=lora", "model.lora.rank=4"),
        lambda key: key.endswith(("lora_A", "lora_B")) or key.startswith("net.gpt.out_head."),
    ),
}


@pytest.mark.parametrize("finetune", ["last_block", pytest.param("lora", marks=pytest.mark.slow)])
def test_small_checkpoint_resume_equals_uninterrupted(
    finetune: str, tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    """1 epoch, then resume to 2 (from a checkpoint of the trained tensors only) == 2 epochs in one go."""
    weights = tiny_weights(tmp_path / "model.safetensors", seed=1)
    kw = {"sms_zip": sms_zip, "tokenizer_file": tokenizer_file}
    # Whole epochs: the cache is filled ahead in the same length-sorted batches in both runs (an epoch limited by
    # limit_train_batches fills it from its own batches, so a resumed run's features can differ in the last bits).
    overrides, held = FINETUNES[finetune]
    extra = (f"model.pretrained={weights}", *overrides, "data.batch_size=64")
    straight, split = tmp_path / "straight", tmp_path / "split"
    done = train_cli(straight, *extra, **kw)
    assert done.returncode == 0, done.stderr[-3000:]
    done = train_cli(split, *extra, "trainer.max_epochs=1", **kw)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = train_cli(split, *extra, "resume=true", **kw)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(straight), final_weights(split)
    assert a.keys() == b.keys() and all(held(k) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint(split / "runs" / "r" / "checkpoints" / "last.ckpt")["global_step"] == 2 * (1045 // 64)


def test_prediction_needs_no_lightning(small: dict) -> None:
    """The checkpoint reader, preprocessing and network load without Lightning (prediction's start-up)."""
    code = (
        "import sys; from spam_lightning.inference.predictor import Predictor; "
        f"p = Predictor.from_checkpoint({small['metrics']['best_checkpoint']!r}, device='cpu'); "
        "print(p.predict(['Win cash now!!'])[0].label); "
        "assert not [m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning'))]"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def restorable_model(small: dict, sms_zip: Path) -> tuple[Any, Any]:
    """The small run's model and data module, built again as train.py builds them (untrained head)."""
    from hydra.utils import instantiate

    from spam_lightning.training.run import build_model_and_fetch_data

    tmp = small["tmp"]
    cfg = compose_cfg(
        "train", "experiment=smoke", f"data.data_dir={tmp / 'data'}", f"data.source={sms_zip}", *small["overrides"]
    )
    datamodule = instantiate(cfg.data, context_length=make_config(cfg.model.arch).context_length)
    return build_model_and_fetch_data(cfg.model, datamodule), datamodule


def test_restoring_a_small_checkpoint_leaves_the_frozen_tensors_alone(small: dict, sms_zip: Path) -> None:
    """The best checkpoint restored for the test pass: the trained tensors are loaded, the frozen ones are neither
    copied nor touched (their version counters stay), so the frozen-feature cache need not fingerprint them again."""
    from helpers.trainers import quiet_trainer

    model, datamodule = restorable_model(small, sms_zip)
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad and "out_head" not in n}
    before = {n: (p.data_ptr(), p._version) for n, p in frozen.items()}
    best = small["metrics"]["best_checkpoint"]
    quiet_trainer(limit_val_batches=1).validate(model, datamodule=datamodule, ckpt_path=best, verbose=False)
    assert {n: (p.data_ptr(), p._version) for n, p in frozen.items()} == before
    trained = read_checkpoint(best)["state_dict"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())


def test_a_small_checkpoint_without_a_trained_tensor_is_refused(small: dict, sms_zip: Path, tmp_path: Path) -> None:
    from helpers.trainers import quiet_trainer

    model, datamodule = restorable_model(small, sms_zip)
    ckpt = torch.load(small["metrics"]["best_checkpoint"], weights_only=False)
    del ckpt["state_dict"]["net.gpt.final_norm.weight"]
    ckpt[RECORD_KEY]["record_sha256"] = record_sha256(ckpt[RECORD_KEY], ckpt["state_dict"])
    torch.save(ckpt, tmp_path / "cut.ckpt")
    with pytest.raises(CheckpointError, match=r"missing \['net.gpt.final_norm.weight'\], unexpected none"):
        quiet_trainer(limit_val_batches=1).validate(model, datamodule=datamodule, ckpt_path=tmp_path / "cut.ckpt")


def test_background_writes_keep_their_order_where_lightnings_async_io_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ModelCheckpoint saves a new best checkpoint, then removes the old one. AtomicCheckpointIO removes it only once
    the new one is on disk; Lightning's AsyncCheckpointIO (why checkpoints.py does not use it) removes it at once,
    while the new one is still being written: a kill then would leave neither."""

    class SyncAtomicIO(TorchCheckpointIO):  # our atomic write, synchronous: what AsyncCheckpointIO would wrap
        def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
            atomic_write(path, lambda f: torch.save(checkpoint, f))

    release, real_save = threading.Event(), torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: (release.wait(30), real_save(obj, f)))  # a slow disk
    old, new = tmp_path / "old.ckpt", tmp_path / "new.ckpt"
    for io, old_kept in ((AtomicCheckpointIO(), True), (AsyncCheckpointIO(SyncAtomicIO()), False)):
        release.clear()
        old.write_bytes(b"the previous best")
        new.unlink(missing_ok=True)
        io.save_checkpoint({"w": torch.ones(2)}, new)
        io.remove_checkpoint(old)
        assert not new.exists() and old.exists() == old_kept, type(io).__name__  # while the new one is written
        release.set()
        io.teardown()
        assert new.exists() and not old.exists()


def test_writes_queued_after_a_failed_one_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new best checkpoint that could not be written (a full disk) must not be followed by the removal of the old
    one, and no later write may still be filling the disk when the failure is reported."""
    release, real_save = threading.Event(), torch.save

    def save_on_a_full_disk(obj: Any, f: Any) -> None:
        release.wait(30)  # the failing write is still under way while training queues more
        if obj.get("fails"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    old, new, later = tmp_path / "old.ckpt", tmp_path / "new.ckpt", tmp_path / "last.ckpt"
    old.write_bytes(b"the previous best")
    io = AtomicCheckpointIO()
    io.save_checkpoint({"fails": True}, new)
    io.remove_checkpoint(old)
    io.save_checkpoint({"w": torch.ones(2)}, later)
    release.set()
    with pytest.raises(DiskFullError, match=r"new\.ckpt was not changed"):
        io.teardown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.ckpt"]  # kept; nothing written after the failure
    io.save_checkpoint({"w": torch.ones(2)}, later)  # the failure was reported: a later save is written again
    io.teardown()
    assert later.exists()
