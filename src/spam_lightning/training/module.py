"""GPT-2 as a spam classifier (chapter 6 of the book) wrapped in a LightningModule.

The network (`spam_lightning.model.net.SpamNet`: GPT-2 with its vocabulary head replaced by
Linear(emb_dim, num_classes)) is built here; this module adds what training needs: which parameters are
frozen, the last-token loss, metrics and the optimizer, and what a checkpoint records (`spam_lightning
.checkpoint`). With frozen blocks below the trainable ones, the frozen part can run once per text
(`spam_lightning.training.feature_cache`, a callback this module asks for): a batch then arrives with its frozen
features, and the step runs only the trainable top.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import CatMetric, MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix

from spam_lightning.data.preprocess import Preprocessing
from spam_lightning.errors import CheckpointError, ConfigError, DivergedError
from spam_lightning.inference.checkpoint import (
    NET_PREFIX,
    RECORD_FORMAT,
    RECORD_KEY,
    check_finite,
    read_record,
    record_sha256,
)
from spam_lightning.inference.metrics import (
    NO_CHECKS,
    WeightedMean,
    binary_counts,
    classification_metrics,
    per_class,
    predicted_ids,
    update_metrics,
)
from spam_lightning.model.lora import LoRAConfig, apply_lora, first_adapted_block, is_adapter
from spam_lightning.model.net import SpamNet, build_net
from spam_lightning.model.weights import provenance
from spam_lightning.training.feature_cache import FROZEN_FEATURES, FrozenFeatureCache, check_cache_dir

log = logging.getLogger("spam_lightning")
info = rank_zero_only(log.info)


Batch = Mapping[str, torch.Tensor]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warmup over `warmup_steps` steps, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# The model config's short names (conf/model/gpt2.yaml): the values its `net` and `optimizer` nodes read, so that
# `model.lr=1e-4` or `model.pool=mean` set them; not SpamClassifier's arguments (training.run leaves them out).
NET_NAMES = ("arch", "pretrained", "init_seed", "dropout", "num_classes", "pool")  # build_net's
OPTIMIZER_NAMES = ("lr", "weight_decay")
SHORT_NAMES = NET_NAMES + OPTIMIZER_NAMES
BOOK_OPTIMIZER = {"lr": 5e-5, "weight_decay": 0.1}  # AdamW's settings in chapter 6: the default optimizer


def use_tf32(enabled: bool, device: torch.device) -> None:
    """`model.tf32`: TF32 tensor cores for float32 matmuls on a CUDA device. train.py applies it before the fit, where
    Lightning's accelerator set-up reads the setting (and warns about Tensor Cores when it is left at "highest")."""
    if enabled and device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def import_module_attr(path: str) -> Any:
    """`torch.optim.SGD` -> the class."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def optimizer_name(optimizer: Callable[..., Any]) -> str:
    """The optimizer class a partial makes, as its import path (torch.optim.AdamW), for the run's record."""
    made = getattr(optimizer, "func", optimizer)
    module = "torch.optim" if made.__module__.startswith("torch.optim.") else made.__module__
    return f"{module}.{made.__qualname__}"


class SpamClassifier(L.LightningModule):
    def __init__(
        self,
        net: SpamNet | None = None,  # the network (model.net: build_net); None: build_net()'s GPT-2 124M, pretrained
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,  # a partial taking the trainable parameters
        # (model.optimizer, `_partial_: true`); None: AdamW with the book's lr 5e-5 and weight decay 0.1
        trainable_layers: str | int = "last_block",  # head | last_block | last_two_blocks | all | k last blocks
        scheduler: str = "none",  # none | cosine (linear warmup, then cosine decay to 0, per step)
        warmup_steps: int = 0,  # warmup optimizer steps for the cosine scheduler
        cache_frozen: bool | str = "auto",  # frozen-trunk feature cache: auto (on when exact) | true | false
        cache_dir: str | None = None,  # None: in memory (GPU memory on a GPU); a folder: on disk, shared by runs
        cache_max_gb: float | None = 20.0,  # cache_dir's size limit (least recently used trunks go); None: none
        compile: bool = False,  # torch.compile the transformer blocks
        tf32: bool = True,  # TF32 matmuls on CUDA GPUs (torch.set_float32_matmul_precision("high"))
        finetune: str = "layers",  # layers: trainable_layers train in full | lora: adapters (spam_lightning.model.lora)
        lora: Mapping[str, Any] | None = None,  # LoRAConfig's fields (rank, alpha, dropout, targets) for finetune=lora
    ) -> None:
        super().__init__()
        if isinstance(lora, DictConfig):
            lora = OmegaConf.to_container(lora, resolve=True)  # type: ignore[assignment]
        net = build_net() if net is None else net
        optimizer = partial(torch.optim.AdamW, **BOOK_OPTIMIZER) if optimizer is None else optimizer
        check_model_options(locals())  # every argument, by name
        cfg = net.gpt.cfg
        if isinstance(trainable_layers, int) and trainable_layers > cfg.n_layers:
            raise ConfigError(
                f"model.trainable_layers as a block count must be in [0, {cfg.n_layers}], got {trainable_layers}"
            )
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self._record_net_and_optimizer(net, optimizer)
        self.net, self.make_optimizer, self.num_classes = net, optimizer, net.num_classes
        self._provenance = (net.origin or {}).get("frozen_weights")  # a seeded random init's, else fetched lazily
        self._freeze(trainable_layers, LoRAConfig.from_dict(lora or {}) if finetune == "lora" else None)
        self._attach_cache(cache_frozen, cache_dir, cache_max_gb)
        # The top block computes only the pooled position (TransformerBlock.forward_at); False runs it
        # in full (benchmarks).
        self.pooled_top_block = True
        if compile:
            for block in self.net.gpt.trf_blocks:
                block.compile()  # in place: parameter names (and checkpoints) stay the same
        self._make_metrics(net.num_classes)
        # What checkpoints record besides the weights: set from the data module in setup().
        self.preprocessing: Preprocessing | None = None
        self.data_record: dict[str, Any] | None = None
        # Checkpoints hold only the trainable tensors when the frozen ones can be had again (pretrained weights, or
        # init_seed; checked by sha256). Random init without a seed and trainable_layers=all keep every weight.
        can_remake = self.hparams.pretrained is not None or self._provenance is not None
        self.small_checkpoints = can_remake and not self.embeddings_trainable

    def _record_net_and_optimizer(self, net: SpamNet, optimizer: Callable[..., Any]) -> None:
        """The hyper_parameters checkpoints record: the net's and the optimizer's settings, flat as the model
        config's short names are, then SpamClassifier's own arguments."""
        origin = net.origin or {"arch": net.gpt.cfg.to_dict(), "pretrained": None, "init_seed": None, "dropout": None}
        hparams = {key: origin[key] for key in ("arch", "pretrained", "init_seed", "dropout")}
        hparams |= {"num_classes": net.num_classes, "trainable_layers": self.hparams.trainable_layers, "pool": net.pool}
        hparams |= {key: getattr(optimizer, "keywords", {}).get(key) for key in ("lr", "weight_decay")}
        hparams["optimizer"] = optimizer_name(optimizer)
        own = {key: value for key, value in self.hparams.items() if key not in hparams}
        self.hparams.clear()
        self.hparams.update({**hparams, **own})

    def _freeze(self, trainable_layers: str | int, lora: LoRAConfig | None) -> None:
        """Everything frozen but the trainable part: the last blocks, final norm and head (trainable_layers), or,
        with LoRA, the adapters (and the head in full when it has none). Frozen modules stay in eval mode."""
        n_layers = self.net.gpt.cfg.n_layers
        self.lora = lora
        if lora is not None:
            apply_lora(self.net, lora)
            self.first_trainable_block: int = first_adapted_block(n_layers, lora)
            self.embeddings_trainable = self.final_norm_trainable = False
        else:
            named = {"head": 0, "last_block": 1, "last_two_blocks": 2, "all": n_layers}
            n_trainable_blocks = named[trainable_layers] if isinstance(trainable_layers, str) else trainable_layers
            self.first_trainable_block = n_layers - n_trainable_blocks
            self.embeddings_trainable = trainable_layers == "all"
            self.final_norm_trainable = trainable_layers != "head"
        self.requires_grad_(False)
        if lora is None:
            for module in self._trainable_modules():
                module.requires_grad_(True)
        else:
            for name, p in self.net.named_parameters():
                p.requires_grad_(is_adapter(name))
            if "head" not in lora.layers:
                self.net.gpt.out_head.requires_grad_(True)
        self.train(self.training)  # puts the frozen modules in eval mode

    def _attach_cache(self, cache_frozen: bool | str, cache_dir: str | None, cache_max_gb: float | None) -> None:
        """The frozen-feature cache (a callback: see configure_callbacks), where it is exact. Frozen modules always
        run in eval mode (no dropout), so their output per text is fixed and the cache is exact whenever something
        below the trainable blocks is frozen, dropout or not."""
        self.cache_off_reason = self._cache_off_reason() if cache_frozen is not False else "model.cache_frozen=false"
        if cache_frozen is True and self.cache_off_reason:
            raise ConfigError(f"model.cache_frozen=true, but {self.cache_off_reason}; use auto or false")
        self.feature_cache: FrozenFeatureCache | None = None
        if self.cache_off_reason is None:
            max_bytes = None if cache_max_gb is None else int(cache_max_gb * 2**30)
            self.feature_cache = FrozenFeatureCache(self.net.pool == "last", cache_dir, max_bytes)
            info(
                "frozen-feature cache on: embeddings + blocks 0-%d run once per text (%s)",
                self.first_trainable_block - 1, "in memory" if cache_dir is None else f"on disk in {cache_dir}",
            )  # fmt: skip
        else:
            info("frozen-feature cache off: %s", self.cache_off_reason)

    def _make_metrics(self, num_classes: int) -> None:
        self.train_metrics = classification_metrics(num_classes, prefix="train/")
        self.val_metrics = self.train_metrics.clone(prefix="val/")
        self.test_metrics = self.train_metrics.clone(prefix="test/")
        # Each stage's (probabilities, labels) of the epoch's steps: the metrics (and the test's confusion matrix and
        # scores) take them at once at the epoch's end, one update instead of one per step (a fifth of the
        # framework's host work per step).
        self.epoch_outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"train": [], "val": [], "test": []}
        self.test_confusion = MulticlassConfusionMatrix(num_classes, **NO_CHECKS)  # of metrics.predicted_ids
        self.test_confusion_matrix: torch.Tensor | None = None  # (C, C) in class-id order, rows = true class
        # Each test text's P(positive class) and label (binary; gathered from all processes): the PR curve's input.
        # NaNs are kept, where torchmetrics drops them by default (scores no longer aligned with labels, a mean loss
        # over the finite batches only); `evaluate` in spam_lightning.training.run then refuses the result.
        self.test_scores, self.test_labels = CatMetric(nan_strategy="disable"), CatMetric(nan_strategy="disable")
        self.test_scored: torch.Tensor | None = None  # (N, 2): label (class id), P(positive class)
        self.train_loss, self.val_loss, self.test_loss = WeightedMean(), WeightedMean(), WeightedMean()
        self.test_prefix = "test"  # log prefix of the test stage; evaluate() sets it per split

    @classmethod
    def from_options(cls, **options: Any) -> SpamClassifier:
        """A SpamClassifier from flat options, as the model config's short names and a checkpoint's hyper_parameters
        give them: arch, pretrained, init_seed, dropout, num_classes, pool (the net), lr, weight_decay and optimizer
        (its import path; AdamW with the book's settings by default), and SpamClassifier's own arguments."""
        net = build_net(**{key: options.pop(key) for key in NET_NAMES if key in options})
        made = import_module_attr(options.pop("optimizer", None) or "torch.optim.AdamW")
        settings = BOOK_OPTIMIZER | {key: options.pop(key) for key in OPTIMIZER_NAMES if key in options}
        return cls(net, partial(made, **{k: v for k, v in settings.items() if v is not None}), **options)

    # --- freezing -------------------------------------------------------------------------------

    def _trainable_modules(self) -> list[nn.Module]:
        gpt = self.net.gpt
        modules: list[nn.Module] = [gpt.out_head, *gpt.trf_blocks[self.first_trainable_block :]]
        if self.final_norm_trainable:
            modules.append(gpt.final_norm)
        if self.embeddings_trainable:
            modules += [gpt.tok_emb, gpt.pos_emb, gpt.drop_emb]
        return modules

    def _frozen_modules(self) -> list[nn.Module]:
        gpt = self.net.gpt
        modules: list[nn.Module] = list(gpt.trf_blocks[: self.first_trainable_block])
        if not self.final_norm_trainable:
            modules.append(gpt.final_norm)
        if not self.embeddings_trainable:
            modules += [gpt.tok_emb, gpt.pos_emb, gpt.drop_emb]
        return modules

    def _cache_off_reason(self) -> str | None:
        if self.lora is not None and self.first_trainable_block == 0:
            return f"model.finetune=lora: every block has adapters (model.lora.targets={list(self.lora.targets)})"
        if self.embeddings_trainable:
            return "trainable_layers=all: the embeddings train, nothing is frozen"
        if self.first_trainable_block == 0:
            layers = self.hparams.trainable_layers
            return f"trainable_layers={layers}: every block trains, only the embeddings are frozen"
        return None

    def frozen_parameters(self) -> list[torch.Tensor]:
        """What frozen_features() depends on: embeddings and the frozen blocks."""
        gpt = self.net.gpt
        modules = [gpt.tok_emb, gpt.pos_emb, *gpt.trf_blocks[: self.first_trainable_block]]
        return [p for module in modules for p in module.parameters()]

    def train(self, mode: bool = True) -> SpamClassifier:
        # Frozen parts never train: no dropout there, so their features are deterministic (cacheable).
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    @property
    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def num_total_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- forward --------------------------------------------------------------------------------

    def frozen_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings + frozen blocks: (B, T) ids -> (B, T, D) hidden states (no autograd if frozen)."""
        with torch.set_grad_enabled(self.embeddings_trainable and torch.is_grad_enabled()):
            return self.net.frozen_features(input_ids, self.first_trainable_block)

    def forward(
        self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None, frozen: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, num_classes) logits; `frozen`: the frozen part's output when already computed (the cache)."""
        hidden = self.frozen_features(input_ids) if frozen is None else frozen
        # With dropout active the full top block runs, so the random masks stay those of the plain forward.
        dropout = self.net.gpt.cfg.dropout > 0 or (self.lora is not None and self.lora.dropout > 0)
        one_position_top = self.pooled_top_block and not (self.training and dropout)
        return self.net.head_logits(hidden, lengths, self.first_trainable_block, one_position_top)

    # --- Lightning steps ------------------------------------------------------------------------

    @property
    def positive_index(self) -> int | None:
        """The positive class's id of two classes (the data's once setup() has run; else 1), None for more."""
        if self.num_classes != 2:
            return None
        return self.preprocessing.positive_index if self.preprocessing is not None else 1

    def configure_callbacks(self) -> list[Callback]:
        cache = self.feature_cache
        if cache is None or (self._trainer is not None and cache in self._trainer.callbacks):
            return []  # off, or attached by an earlier fit or test of this trainer (it keeps its rows)
        return [cache]

    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["lengths"], batch.get(FROZEN_FEATURES))
        labels = batch["labels"]
        loss = F.cross_entropy(logits, labels)
        self.epoch_outputs[stage].append((logits.detach().softmax(dim=-1), labels))
        mean_loss: WeightedMean = getattr(self, f"{stage}_loss")
        mean_loss.update(loss.detach(), weight=labels.shape[0])
        if stage == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False)  # the bar reads it (training.progress)
        return loss

    def _log_epoch(self, stage: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Log the stage's epoch metrics and reset them for the next epoch; the epoch's (probabilities, labels) of
        this process, None if it had no batch.

        The metrics are updated with the epoch's outputs and computed here rather than logged as Metric objects
        every step: Lightning moves a logged Metric's whole state to the device on each self.log call, and AUROC's
        state grows with every batch, which made steps slower as an epoch went on. compute() reduces over all
        processes.
        """
        prefix = self.test_prefix if stage == "test" else stage
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        mean_loss: WeightedMean = getattr(self, f"{stage}_loss")
        outputs, self.epoch_outputs[stage] = self.epoch_outputs[stage], []
        if not mean_loss.update_called:  # no batch this epoch (e.g. resumed just before its end): nothing to log
            return None
        probs, labels = (torch.cat(parts) for parts in zip(*outputs, strict=True))
        update_metrics(metrics, probs, labels, self.positive_index)
        values = {"loss": mean_loss.compute(), **{name: m.compute() for name, m in metrics.items(keep_base=True)}}
        mean_loss.reset()
        metrics.reset()
        class_names = self.preprocessing.labels if self.preprocessing is not None else None
        for name, value in per_class(values, class_names).items():
            show = name == "accuracy" or (name == "loss" and stage != "train")
            # sync_dist: the values are already equal on every rank; averaging them changes nothing.
            self.log(f"{prefix}/{name}", value, prog_bar=show, sync_dist=True)
        return probs, labels

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        self._stop_if_not_finite(loss, batch_idx)
        return loss

    def _stop_if_not_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """A NaN/Inf loss stops training before its backward pass, so no weight (and no checkpoint) holds it.
        All processes decide together: one rank raising alone would leave the others waiting in the all-reduce."""
        here = not bool(torch.isfinite(loss.detach()))
        diverged = here
        if self.trainer.world_size > 1:
            diverged = self.trainer.strategy.reduce_boolean_decision(here, all=False)
        if not diverged:
            return
        whose = (
            f"the training loss is {float(loss.detach()):g}"
            if here
            else "another process's training loss is not finite"
        )
        precision = str(self.trainer.precision)
        hint = "" if precision.startswith(("32", "64")) else " or in 32-bit precision (trainer.precision=32)"
        raise DivergedError(
            f"{whose} at epoch {self.current_epoch}, batch {batch_idx} (after {self.global_step} optimizer steps): the "
            f"run diverged (model.lr={self.hparams.lr}, trainer.precision={precision}); no weight was updated from "
            f"this batch. Start again with a lower model.lr{hint}"
        )

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        outputs = self._log_epoch("test")
        positive = self.positive_index
        if outputs is not None:
            probs, labels = outputs
            self.test_confusion.update(predicted_ids(probs, positive), labels)
            if positive is not None:
                self.test_scores.update(probs[:, positive])
                self.test_labels.update(labels)
        matrix = self.test_confusion.compute()  # synced across processes
        self.test_confusion.reset()
        self.test_confusion_matrix = matrix.cpu()
        if positive is not None:
            self.test_scored = torch.stack([self.test_labels.compute(), self.test_scores.compute()], dim=1).cpu()
            self.test_scores.reset()
            self.test_labels.reset()
            for name, value in binary_counts(matrix.tolist(), positive).items():
                self.log(f"{self.test_prefix}/{name}", float(value), sync_dist=True)  # equal on all ranks

    def setup(self, stage: str) -> None:
        use_tf32(self.hparams.tf32, self.trainer.strategy.root_device)  # for trainers other than train.py's
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "preprocessing", None) is not None:
            self.preprocessing = replace(datamodule.preprocessing, pool=self.net.pool)
            self.data_record = datamodule.record()

    # --- checkpoints ----------------------------------------------------------------------------

    def frozen_weights_provenance(self) -> dict[str, Any] | None:
        """Where the frozen weights can be had again (None: nowhere but in this model)."""
        if self._provenance is None and self.hparams.pretrained is not None:
            self._provenance = provenance(self.net.gpt.cfg, self.hparams.pretrained)
        return self._provenance

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Never write a checkpoint that would predict garbage (the training loss check stops a run before this).
        check_finite({n: p for n, p in self.named_parameters() if p.requires_grad}, "the checkpoint to save")
        frozen = self.frozen_weights_provenance() if self.small_checkpoints else None
        checkpoint[RECORD_KEY] = {
            "format": RECORD_FORMAT,
            "net": self.net.args(),
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing is not None else None,
            "data": self.data_record,
            "frozen_weights": frozen,
            "lora": self.lora.to_dict() if self.lora is not None else None,
        }
        if frozen is not None:
            kept = self._small_checkpoint_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in kept}
        record = checkpoint[RECORD_KEY]
        record["record_sha256"] = record_sha256(record, checkpoint["state_dict"])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Before Lightning loads the state dict: a checkpoint of the trained tensors only keeps this model's frozen
        ones, once their recorded provenance is checked to be this model's. Lightning then loads the checkpoint's
        tensors alone: the frozen ones are neither copied onto themselves nor changed (so the frozen-feature cache
        keeps its rows without fingerprinting the trunk again: seconds for GPT-2 XL when the best checkpoint is
        restored for the test). The keys are checked here instead, as a strict load would."""
        source = f"checkpoint {str(self.trainer.ckpt_path)!r}" if self._trainer is not None else "the checkpoint"
        frozen = read_record(checkpoint, source).get("frozen_weights")
        self.strict_loading = frozen is None
        if frozen is None:
            return
        ours = self.frozen_weights_provenance()
        if ours != frozen:
            raise CheckpointError(
                f"{source} was trained on the frozen weights {frozen}, but this model's are "
                f"{ours or 'randomly initialised (model.pretrained=null)'}; use the same model.pretrained "
                "(and model.init_seed)"
            )
        own = set(self.state_dict())
        kept = self._small_checkpoint_keys()
        missing, unexpected = sorted(kept - set(checkpoint["state_dict"])), sorted(set(checkpoint["state_dict"]) - own)
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not hold this model's trained tensors: missing {missing or 'none'}, "
                f"unexpected {unexpected or 'none'}"
            )

    def _small_checkpoint_keys(self) -> set[str]:
        """What a small checkpoint holds: the trained tensors, and the new head even where frozen (a LoRA target)."""
        return {
            NET_PREFIX + name
            for name, p in self.net.named_parameters()
            if p.requires_grad or name.startswith("gpt.out_head.")
        }

    def on_fit_start(self) -> None:
        trainable, total = self.num_trainable_parameters, self.num_total_parameters
        if self.trainer.is_global_zero:
            log.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
        for logger in self.loggers:
            logger.log_hyperparams({"num_trainable_parameters": trainable, "num_total_parameters": total})

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        # Fused: one launch on a GPU, one pass per tensor on a CPU (5.7x faster for the last block; within 1.2e-7).
        fused = self.device.type in ("cuda", "cpu")
        fused_ok = (
            getattr(self.make_optimizer, "func", None) is torch.optim.AdamW
            and "fused" not in self.make_optimizer.keywords
        )
        optimizer = self.make_optimizer(params, fused=fused) if fused_ok else self.make_optimizer(params)
        if hp.scheduler == "none":
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ConfigError("scheduler='cosine' needs a finite trainer.max_steps or max_epochs")
        schedule = partial(warmup_cosine, warmup_steps=hp.warmup_steps, total_steps=int(total_steps))
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}


NAMED_TRAINABLE = ("head", "last_block", "last_two_blocks", "all")  # model.trainable_layers, besides a block count
SCHEDULERS = ("none", "cosine")
FINETUNE = ("layers", "lora")  # model.finetune


def check_model_options(args: Mapping[str, Any]) -> None:
    """SpamClassifier's own arguments, before anything is built (build_net checks the net's; the optimizer its
    own, besides the learning rate and weight decay the book's knobs set)."""
    trainable_layers, scheduler, warmup_steps = (args[k] for k in ("trainable_layers", "scheduler", "warmup_steps"))
    optimizer = args["optimizer"]
    keywords = getattr(optimizer, "keywords", {})
    lr, weight_decay = keywords.get("lr", 1.0), keywords.get("weight_decay", 0.0)

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def is_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if not callable(optimizer):
        raise ConfigError(
            f"model.optimizer must be a torch optimizer as a partial (_partial_: true), got {optimizer!r}"
        )
    if is_int(trainable_layers):
        if trainable_layers < 0:
            raise ConfigError(f"model.trainable_layers as a block count must be >= 0, got {trainable_layers}")
    elif trainable_layers not in NAMED_TRAINABLE:
        raise ConfigError(
            f"model.trainable_layers must be one of {list(NAMED_TRAINABLE)} or a number of last blocks "
            f"(0..n_layers), got {trainable_layers!r}"
        )
    if not (is_number(lr) and lr > 0):
        raise ConfigError(f"model.lr must be a number > 0, got {lr!r}")
    if not (is_number(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"model.weight_decay must be a number >= 0, got {weight_decay!r}")
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"model.scheduler must be one of {list(SCHEDULERS)}, got {scheduler!r}")
    if not (is_int(warmup_steps) and warmup_steps >= 0):
        raise ConfigError(f"model.warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    cache_frozen, cache_dir = args["cache_frozen"], args["cache_dir"]
    if not (cache_frozen == "auto" or isinstance(cache_frozen, bool)):
        raise ConfigError(f"model.cache_frozen must be auto, true or false, got {cache_frozen!r}")
    if cache_dir is not None and not isinstance(cache_dir, str):
        raise ConfigError(f"model.cache_dir must be null or a folder, got {cache_dir!r}")
    if cache_dir is not None:
        check_cache_dir(cache_dir)  # train.py also checks it against runs_dir
    cache_max_gb = args.get("cache_max_gb")
    if cache_max_gb is not None and not (is_number(cache_max_gb) and cache_max_gb > 0):
        raise ConfigError(f"model.cache_max_gb must be null or a number > 0, got {cache_max_gb!r}")
    for name in ("compile", "tf32"):
        value = args[name]
        if not isinstance(value, bool):
            raise ConfigError(f"model.{name} must be true or false, got {value!r}")
    finetune, lora = args.get("finetune", "layers"), args.get("lora")
    if finetune not in FINETUNE:
        raise ConfigError(f"model.finetune must be one of {list(FINETUNE)}, got {finetune!r}")
    if finetune == "lora":
        if lora is not None and not isinstance(lora, Mapping):
            raise ConfigError(f"model.lora must be a mapping of rank, alpha, dropout, targets, got {lora!r}")
        try:
            LoRAConfig.from_dict(lora or {})
        except ValueError as err:
            raise ConfigError(f"model.{err}") from err
