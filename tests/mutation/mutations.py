"""The mutations `run_mutations.py` plants, one at a time: small bugs a user would feel.

Each is (id, file, original, replacement, tests, description, kind):

- `original` is an exact snippet of the file (it must occur exactly once; otherwise the mutation is reported
  as stale, never applied blindly). Keep anchors short and on code that is unlikely to be reworded.
- `tests` are selections, each "FILE", "FILE::TEST" or "FILE -k EXPR" (paths from the repository root);
  the runner joins them into one pytest call. List the new targeted tests and the older tests that could
  catch the bug, so that a run without the new test files (`--without`) shows what the older suite alone
  catches.
- `kind`: "issue" for the bugs listed in the issue "Tests that pin the method down", "item5" for the one
  item 5 (not this tool's tests) covers, "" for the others.
"""

from __future__ import annotations

from dataclasses import dataclass

PKG = "src/spam_lightning/"
POOLING = "tests/model/test_method_pooling.py"
PREDICTION = "tests/inference/test_method_prediction.py"
SAMPLING = "tests/data/test_method_sampling.py"
OPTIONS = "tests/training/test_options_effect.py"
EXPORT_BASELINE = "tests/training/test_options_export_baseline.py"
ORACLE = "tests/inference/test_metrics_oracle.py"
SERVING = "tests/inference/test_options_predict_evaluate_serve.py"


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    description: str
    kind: str = ""


MUTATIONS: tuple[Mutation, ...] = (
    # --- the bugs listed in the issue ---------------------------------------------------------------
    Mutation(
        "predict-inverted",
        PKG + "inference/predictor.py",
        "label = labels[positive if p[positive] > threshold else 1 - positive]",
        "label = labels[1 - positive if p[positive] > threshold else positive]",
        (PREDICTION + " -k predictor_label or boundary", "tests/inference/test_predict.py -k bad_texts or cli or bf16"),
        "Predictor.predict labels inverted (P(spam) 0.993 called ham)",
        "issue",
    ),
    Mutation(
        "last-token-early",
        PKG + "model/gpt.py",
        "pos = lengths - 1",
        "pos = (lengths - 2).clamp(min=0)",
        (POOLING, "tests/training/test_classifier.py -k pool"),
        "pool=last_token reads one position early (clamped at 0), in training and prediction alike",
        "issue",
    ),
    Mutation(
        "train-last-position",
        PKG + "model/gpt.py",
        "pos = torch.full((b,), t - 1, device=x.device)",
        "pos = torch.full((b,), t - 1 - int(self.training), device=x.device)",
        (POOLING + " -k training_loss", "tests/model/test_performance.py -k cache_gives or one_position"),
        "pool=last: training-mode logits at position T-2, evaluation at T-1 (experiment=book trains the wrong one)",
        "issue",
    ),
    Mutation(
        "resume-skip-too-many",
        PKG + "data/samplers.py",
        "itertools.islice(iter(self.batch_sampler), skip, None)",
        "itertools.islice(iter(self.batch_sampler), skip + 1, None)",
        (SAMPLING + " -k resume", "tests/training/test_train.py -k resume_equals or ckpt_path_continues"),
        "mid-epoch resume skips one batch too many",
        "issue",
    ),
    Mutation(
        "resume-skip-too-few",
        PKG + "data/samplers.py",
        "itertools.islice(iter(self.batch_sampler), skip, None)",
        "itertools.islice(iter(self.batch_sampler), max(skip - 1, 0), None)",
        (SAMPLING + " -k resume", "tests/training/test_train.py -k resume_equals or ckpt_path_continues"),
        "mid-epoch resume skips one batch too few (repeats the last trained batch)",
        "issue",
    ),
    Mutation(
        "resume-batches-done",
        PKG + "data/modules.py",
        "return 0 if progress.is_last_batch else progress.current.processed",
        "return 0 if progress.is_last_batch else progress.current.processed + 1",
        (SAMPLING + " -k resume", "tests/training/test_train.py -k resume_equals or ckpt_path_continues"),
        "the data module counts one batch more than Lightning processed before the checkpoint",
        "issue",
    ),
    Mutation(
        "eval-shards-overlap",
        PKG + "data/samplers.py",
        "self.indices = range(rank, size, world_size)",
        "self.indices = range(0, size, world_size)",
        (SAMPLING + " -k shard", "tests/training/test_train.py::test_ddp_two_cpu_processes"),
        "DDP evaluation shards overlap: every rank starts from item 0",
        "issue",
    ),
    Mutation(
        "evaluate-threshold-ge",
        PKG + "inference/metrics.py",
        "return torch.where(scores > threshold, positive, 1 - positive)",
        "return torch.where(scores >= threshold, positive, 1 - positive)",
        (PREDICTION + " -k boundary or reproduce", "tests/inference/test_predict.py -k evaluate"),
        "evaluate's confusion matrix and misclassified list count P(spam) == threshold as spam (>=), predict ham (>)",
        "issue",
    ),
    Mutation(
        "predict-threshold-ge",
        PKG + "inference/predictor.py",
        "label = labels[positive if p[positive] > threshold else 1 - positive]",
        "label = labels[positive if p[positive] >= threshold else 1 - positive]",
        (PREDICTION + " -k predictor_label or boundary", "tests/inference/test_predict.py -k bad_texts or cli or bf16"),
        "predict calls P(spam) == threshold spam (>=), evaluate and the training metrics ham (>)",
        "issue",
    ),
    Mutation(
        "precision-at-threshold-ge",
        PKG + "inference/report.py",
        "if s > threshold and y == 1)",
        "if s >= threshold and y == 1)",
        (PREDICTION + " -k boundary", "tests/inference/test_predict.py -k choose_threshold or evaluate"),
        "the precision/recall reported for a threshold count ties as spam (>=)",
        "issue",
    ),
    Mutation(
        "cached-zip-not-checked",
        PKG + "data/sms_spam.py",
        "if not (zip_path.is_file() and file_sha256(zip_path) == ZIP_SHA256):",
        "if not zip_path.is_file():",
        ("tests/data/test_data.py -k zip or download or checksum or corrupt",),
        "a corrupt zip already in data_dir is used without re-checking its sha256",
        "item5",
    ),
    # --- data ---------------------------------------------------------------------------------------
    Mutation(
        "split-off-by-one",
        PKG + "data/tables.py",
        "        n = len(df)\n        train_end, val_end = int(n * train_f),",
        "        n = len(df)\n        train_end, val_end = int(n * train_f) + 1,",
        ("tests/data/test_data.py -k split",),
        "70/10/20 split one text off (1046/148/300)",
    ),
    Mutation(
        "parse-last-tab",
        PKG + "data/sms_spam.py",
        'label, tab, text = decoded.partition("\\t")',
        'label, tab, text = decoded.rpartition("\\t")',
        ("tests/data/test_data.py -k parse or crlf or bad_lines",),
        "lines split at their last tab instead of the first",
    ),
    Mutation(
        "pad-with-zero",
        PKG + "data/preprocess.py",
        "max(lengths)), pad_token_id, dtype=torch.long)",
        "max(lengths)), 0, dtype=torch.long)",
        (
            "tests/data/test_data.py -k padding",
            "tests/inference/test_predict.py::test_fixed_padding_and_pool_last_match_the_datamodule",
        ),
        "batches padded with token 0 instead of <|endoftext|>",
    ),
    Mutation(
        "truncate-one-short",
        PKG + "data/preprocess.py",
        "return [ids[:limit] for ids in full]",
        "return [ids[: limit - 1] for ids in full]",
        (
            "tests/data/test_data.py -k padding or context",
            "tests/inference/test_predict.py::test_fixed_padding_and_pool_last_match_the_datamodule",
        ),
        "texts truncated one token shorter than data.max_length / the context length",
    ),
    Mutation(
        "train-order-fixed",
        PKG + "data/samplers.py",
        "generator = torch.Generator().manual_seed(self.sampler.seed + self.sampler.epoch)",
        "generator = torch.Generator().manual_seed(self.sampler.seed)",
        (SAMPLING + " -k resumed_epoch or own_order or anew", "tests/model/test_performance.py -k length_buckets"),
        "length-bucketed batches in the same order every epoch",
    ),
    # --- tokenizer ----------------------------------------------------------------------------------
    Mutation(
        "pad-token-id",
        PKG + "data/preprocess.py",
        "PAD_TOKEN_ID = 50256",
        "PAD_TOKEN_ID = 50255",
        ("tests/data/test_data.py -k padding", "tests/training/test_classifier.py -k pool"),
        "padding token 50255 instead of <|endoftext|> (50256)",
    ),
    # --- GPT and weights ----------------------------------------------------------------------------
    Mutation(
        "attention-not-causal",
        PKG + "model/gpt.py",
        "is_causal=True",
        "is_causal=False",
        ("tests/model/test_weights.py -k tiny_oracle", "tests/training/test_classifier.py -k padding_invariant"),
        "attention sees later tokens (no causal mask)",
    ),
    Mutation(
        "block-wrong-norm",
        PKG + "model/gpt.py",
        "x = x + self.drop_shortcut(self.att(self.norm1(x)))",
        "x = x + self.drop_shortcut(self.att(self.norm2(x)))",
        ("tests/model/test_weights.py -k tiny_oracle",),
        "attention reads the second LayerNorm",
    ),
    Mutation(
        "forward-at-mask",
        PKG + "model/gpt.py",
        "hidden = torch.arange(t, device=x.device) > pos[:, None]",
        "hidden = torch.arange(t, device=x.device) >= pos[:, None]",
        (POOLING + " -k after_the_blocks", "tests/model/test_performance.py -k one_position"),
        "the one-position top block also masks the pooled position itself",
    ),
    Mutation(
        "qkv-split-order",
        PKG + "model/weights.py",
        "for name, weight, bias in zip(QKV, weights, biases, strict=True):",
        "for name, weight, bias in zip((QKV[1], QKV[0], QKV[2]), weights, biases, strict=True):",
        ("tests/model/test_weights.py -k oracle",),
        "OpenAI's fused c_attn split as key, query, value",
    ),
    Mutation(
        "weights-wrong-bias",
        PKG + "model/weights.py",
        '("attn.c_proj.bias", "att.out_proj.bias", False),',
        '("mlp.c_proj.bias", "att.out_proj.bias", False),',
        ("tests/model/test_weights.py -k oracle",),
        "the attention output projection gets the MLP's bias (same shape: a copy-paste bug)",
    ),
    # --- pooling ------------------------------------------------------------------------------------
    Mutation(
        "mean-over-padding",
        PKG + "model/gpt.py",
        "return normed.sum(dim=1) / lengths[:, None].to(normed.dtype)",
        "return normed.sum(dim=1) / x.shape[1]",
        (POOLING + " -k pooled or mean", "tests/training/test_classifier.py -k pool"),
        "pool=mean divides by the padded width instead of the text's length",
    ),
    Mutation(
        "first-is-second",
        PKG + "model/gpt.py",
        "pos = torch.zeros(b, dtype=torch.long, device=x.device)",
        "pos = torch.ones(b, dtype=torch.long, device=x.device)",
        (POOLING + " -k pooled or first", "tests/training/test_classifier.py -k pool"),
        "pool=first reads the second position",
    ),
    # --- freezing -----------------------------------------------------------------------------------
    Mutation(
        "final-norm-frozen",
        PKG + "training/module.py",
        'self.final_norm_trainable = trainable_layers != "head"',
        'self.final_norm_trainable = trainable_layers == "all"',
        ("tests/training/test_classifier.py -k freezing or counts",),
        "the final LayerNorm frozen for last_block (the book trains it)",
    ),
    Mutation(
        "frozen-dropout-on",
        PKG + "training/module.py",
        "        for module in self._frozen_modules():\n            module.eval()",
        "        for module in self._frozen_modules():\n            module.train(mode)",
        ("tests/training/test_classifier.py -k freezing", "tests/model/test_performance.py -k cache_gives"),
        "frozen blocks run dropout in training",
    ),
    # --- optimizer ----------------------------------------------------------------------------------
    Mutation(
        "no-weight-decay",
        PKG + "training/module.py",
        "optimizer = self.make_optimizer(params, fused=fused) if fused_ok",
        "optimizer = self.make_optimizer(params, fused=fused, weight_decay=0.0) if fused_ok",
        ("tests/training/test_classifier.py -k optimizer",),
        "AdamW without the configured weight decay",
    ),
    Mutation(
        "warmup-from-zero",
        PKG + "training/module.py",
        "return (step + 1) / warmup_steps",
        "return step / warmup_steps",
        ("tests/training/test_classifier.py -k warmup or cosine",),
        "the warmup's first step has learning rate 0",
    ),
    # --- LoRA ---------------------------------------------------------------------------------------
    Mutation(
        "lora-peft-scaling",
        PKG + "model/lora.py",
        "self.alpha * (self.lora_dropout(x) @ self.lora_A @ self.lora_B)",
        "self.alpha / self.lora_A.shape[1] * (self.lora_dropout(x) @ self.lora_A @ self.lora_B)",
        ("tests/model/test_lora.py -k peft_oracle",),
        "LoRA scaled by alpha / r (PEFT's) instead of the book's alpha",
    ),
    Mutation(
        "lora-merge-untransposed",
        PKG + "model/lora.py",
        "delta = self.alpha * (self.lora_A @ self.lora_B).t()",
        "delta = self.alpha * (self.lora_A @ self.lora_B).reshape(self.out_features, self.in_features)",
        ("tests/model/test_lora.py -k merging",),
        "merging adds the adapter's product in the wrong layout",
    ),
    # --- checkpoints --------------------------------------------------------------------------------
    Mutation(
        "resume-any-trainable",
        PKG + "training/run.py",
        'RESUME_FIXED_MODEL = ("arch", "dropout", "num_classes", "trainable_layers", "pool",',
        'RESUME_FIXED_MODEL = ("arch", "dropout", "num_classes", "pool",',
        ("tests/training/test_train.py -k incompatible",),
        "a checkpoint with another trainable part is continued",
    ),
    Mutation(
        "unsafe-checkpoint-load",
        PKG + "inference/checkpoint.py",
        'ckpt = torch.load(path, map_location="cpu", weights_only=True,',
        'ckpt = torch.load(path, map_location="cpu", weights_only=False,',
        ("tests/inference/test_predict.py::test_checkpoint_with_pickled_code_is_refused",),
        "predict unpickles arbitrary objects from a checkpoint",
    ),
    # --- DDP sharding (training) --------------------------------------------------------------------
    Mutation(
        "train-shards-same",
        PKG + "data/modules.py",
        'self.datasets["train"], num_replicas=world, rank=rank, shuffle=True, seed=self.seed',
        'self.datasets["train"], num_replicas=world, rank=0, shuffle=True, seed=self.seed',
        (SAMPLING + " -k training_shards", "tests/training/test_train.py::test_ddp_two_cpu_processes"),
        "every DDP rank trains on rank 0's shard",
    ),
    # --- feature cache ------------------------------------------------------------------------------
    Mutation(
        "cache-drops-padding",
        PKG + "training/module.py",
        'FrozenFeatureCache(self.net.pool == "last", cache_dir',
        'FrozenFeatureCache(self.net.pool == "mean", cache_dir',
        (POOLING + " -k training_loss", "tests/model/test_performance.py -k cache_gives"),
        "pool=last with the cache: the padded positions are zeros instead of the pad token's features",
    ),
    Mutation(
        "cache-never-invalidated",
        PKG + "training/feature_cache.py",
        "if digest != self._digest:",
        "if self._digest is None:",
        ("tests/model/test_performance.py -k cache_empties or memory_mapped",),
        "the cache keeps stale features after the frozen weights change",
    ),
    # --- prediction and export ----------------------------------------------------------------------
    Mutation(
        "predict-truncates-short",
        PKG + "inference/predictor.py",
        "valid = iter(zip(ids, truncated, strict=True))",
        "valid = iter(zip([i[: self.preprocessing.token_limit - 1] for i in ids], truncated, strict=True))",
        ("tests/inference/test_predict.py -k bad_texts or fixed_padding",),
        "predict truncates one token shorter than training",
    ),
    Mutation(
        "predict-ignores-pad-length",
        PKG + "data/preprocess.py",
        "return pad(rows, self.pad_length, self.pad_token_id)",
        "return pad(rows, None, self.pad_token_id)",
        ("tests/inference/test_predict.py::test_fixed_padding_and_pool_last_match_the_datamodule",),
        "pool=last models: predict pads to the batch's longest text, not the training length",
    ),
    Mutation(
        "export-pool",
        PKG + "inference/export.py",
        '"net": model.net.args(),',
        '"net": {**model.net.args(), "pool": "last"},',
        ("tests/inference/test_predict.py -k export",),
        "an exported model records pool=last whatever it was trained with",
    ),
    Mutation(
        "choose-threshold-strict",
        PKG + "inference/evaluate.py",
        "if tp / (k + 1) >= target_precision:",
        "if tp / (k + 1) > target_precision:",
        ("tests/inference/test_predict.py -k choose_threshold",),
        "a threshold whose precision equals the target is not chosen",
    ),
    # --- sweeps -------------------------------------------------------------------------------------
    Mutation(
        "sweep-sort-reversed",
        PKG + "training/sweeps.py",
        'scored.sort(key=lambda r: r.value(metric), reverse=mode == "max")',
        'scored.sort(key=lambda r: r.value(metric), reverse=mode == "min")',
        ("tests/training/test_sweeps.py -k fabricated",),
        "the sweep summary lists the worst job first",
    ),
    Mutation(
        "sweep-fail-on-any",
        PKG + "training/sweeps.py",
        "return int(failed > 0)",
        "return int(failed > 1)",
        ("tests/training/test_sweeps.py -k fabricated or exit_code",),
        "a sweep with one failed job exits 0",
    ),
    # --- issue 28: an option accepted and then not used, a metric with another definition -----------
    Mutation(
        "csv-classes-ignored",
        PKG + "data/modules.py",
        "self.classes = list(classes) if classes else None",
        "self.classes = None",
        (OPTIONS + " -k csv_classes", "tests/data/test_csv_data.py"),
        "data.classes is dropped: the class ids are the sorted labels, not the order the user gave",
        "issue28",
    ),
    Mutation(
        "lora-lr-ignored",
        PKG + "training/module.py",
        "optimizer = self.make_optimizer(params, fused=fused) if fused_ok",
        "optimizer = self.make_optimizer(params, fused=fused, **({} if self.lora is None else {'lr': 8e-4})) "
        "if fused_ok",
        (
            OPTIONS + " -k lr_and_weight_decay",
            "tests/model/test_lora.py",
            "tests/training/test_classifier.py -k optimizer",
        ),
        "model.lr is ignored for a LoRA run (the appendix's 8e-4 is used)",
        "issue28",
    ),
    Mutation(
        "weight-decay-ignored",
        PKG + "training/module.py",
        "optimizer = self.make_optimizer(params, fused=fused) if fused_ok",
        "optimizer = self.make_optimizer(params, fused=fused, weight_decay=0.1) if fused_ok",
        (OPTIONS + " -k lr_and_weight_decay", "tests/training/test_classifier.py -k optimizer"),
        "model.weight_decay is ignored (the book's 0.1 is used)",
        "issue28",
    ),
    Mutation(
        "baseline-fits-validation",
        PKG + "training/baseline.py",
        'features = vectorizer.fit_transform(splits["train"]["text"])',
        'splits["train"] = splits["validation"]; features = vectorizer.fit_transform(splits["train"]["text"])',
        (EXPORT_BASELINE + " -k baseline", "tests/data/test_csv_data.py -k baseline"),
        "the baseline is fitted on the validation split (its train metrics are then the validation split's)",
        "issue28",
    ),
    Mutation(
        "baseline-max-features-ignored",
        PKG + "training/baseline.py",
        "TfidfVectorizer(max_features=int(cfg.max_features),",
        "TfidfVectorizer(max_features=50000,",
        (EXPORT_BASELINE + " -k baseline", "tests/data/test_csv_data.py -k baseline"),
        "baseline.py's max_features is ignored",
        "issue28",
    ),
    Mutation(
        "evaluate-macro-weighted",
        PKG + "inference/metrics.py",
        'name: round(float(fn_(probs, labels, average="macro", **kw)), 6)',
        'name: round(float(fn_(probs, labels, average="weighted", **kw)), 6)',
        (ORACLE + " -k evaluate_multiclass", "tests/data/test_csv_data.py -k three_classes"),
        "evaluate.py's multi-class averages are weighted, not macro",
        "issue28",
    ),
    Mutation(
        "training-macro-weighted",
        PKG + "inference/metrics.py",
        'kw: dict[str, Any] = {"num_classes": num_classes, "average": "macro"}',
        'kw: dict[str, Any] = {"num_classes": num_classes, "average": "weighted"}',
        (ORACLE + " -k training_metrics_multiclass or test_loop", "tests/training/test_classifier.py -k multiclass"),
        "training's multi-class averages are weighted, not macro",
        "issue28",
    ),
    Mutation(
        "data-seed-order-ignored",
        PKG + "data/modules.py",
        "rank=rank, shuffle=True, seed=self.seed)",
        "rank=rank, shuffle=True, seed=123)",
        (OPTIONS + " -k data_seed", "tests/data/test_data.py -k training_order", SAMPLING),
        "data.seed no longer orders the training batches (always seed 123's order)",
        "issue28",
    ),
    Mutation(
        "ckpt-path-not-passed",
        PKG + "training/run.py",
        "trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)",
        "trainer.fit(model, datamodule=datamodule, ckpt_path=None)",
        (OPTIONS + " -k continues", "tests/training/test_train.py -k ckpt_path or resume"),
        "ckpt_path and resume=true are checked, then training starts afresh",
        "issue28",
    ),
    Mutation(
        "every-n-steps-ignored",
        PKG + "training/checkpoints.py",
        "self.every_n_steps = every_n_steps",
        "self.every_n_steps = None",
        (OPTIONS + " -k every_n_steps", "tests/training/test_checkpoint.py", "tests/training/test_train.py -k resume"),
        "checkpoint_every_n_steps writes nothing between epochs",
        "issue28",
    ),
    Mutation(
        "eval-batch-size-ignored",
        PKG + "data/modules.py",
        "self.eval_batch_size = eval_batch_size or batch_size",
        "self.eval_batch_size = batch_size",
        (OPTIONS + " -k eval_batch_size", "tests/data/test_data.py", SAMPLING),
        "data.eval_batch_size is ignored (evaluation batches have the training batch size)",
        "issue28",
    ),
    Mutation(
        "tokenizer-url-ignored",
        PKG + "data/modules.py",
        "self.tokenizer_url = tokenizer_url",
        "self.tokenizer_url = TIKTOKEN_URL",
        (OPTIONS + " -k tokenizer_url", "tests/data/test_data.py"),
        "data.tokenizer_url is ignored (tiktoken's URL is used)",
        "issue28",
    ),
    Mutation(
        "csv-stratify-ignored",
        PKG + "data/modules.py",
        "frames = split_by_fractions(df, self.fractions, self.seed, self.stratify, source, names)",
        "frames = split_by_fractions(df, self.fractions, self.seed, True, source, names)",
        (OPTIONS + " -k csv_fractions", "tests/data/test_csv_data.py"),
        "data.stratify=false still splits per class",
        "issue28",
    ),
    Mutation(
        "export-overwrite-ignored",
        PKG + "inference/export.py",
        "if previous and not overwrite:",
        "if previous:",
        (
            EXPORT_BASELINE + " -k overwrite",
            "tests/inference/test_export_hf.py -k overwrite",
            "tests/inference/test_export_onnx.py -k overwrite",
        ),
        "export.py's overwrite=true is ignored: an earlier export is never replaced",
        "issue28",
    ),
    Mutation(
        "print-config-ignored",
        PKG + "training/run.py",
        'if cfg.get("print_config"):',
        "if False:",
        (OPTIONS + " -k print_config", "tests/test_library.py -k debug"),
        "print_config=true prints nothing",
        "issue28",
    ),
    Mutation(
        "lora-alpha-ignored",
        PKG + "model/lora.py",
        "LoRALinear(base, config.rank, config.alpha, config.dropout)",
        "LoRALinear(base, config.rank, 16.0, config.dropout)",
        (OPTIONS + " -k lora_rank", "tests/model/test_lora.py"),
        "model.lora.alpha is ignored (the book's 16 is used)",
        "issue28",
    ),
    Mutation(
        "csv-seed-not-global",
        "conf/data/csv.yaml",
        "seed: ${seed}",
        "seed: 123",
        (OPTIONS + " -k seed_draws", "tests/data/test_csv_data.py"),
        "data=csv ignores the global seed (its splits and order stay seed 123's)",
        "issue28",
    ),
    Mutation(
        "serve-request-threshold-ignored",
        PKG + "inference/serve.py",
        'threshold = self.settings["threshold"] if job.threshold is None else job.threshold',
        'threshold = self.settings["threshold"]',
        (SERVING + " -k request_text_texts_and_threshold", "tests/inference/test_serve.py -k threshold"),
        "serve: a request's own \"threshold\" is ignored (the server's is used)",
        "issue28",
    ),
    Mutation(
        "serve-max-texts-ignored",
        PKG + "inference/serve.py",
        "max_length=limits.max_texts,",
        "max_length=10_000,",
        (SERVING + " -k limits", "tests/inference/test_serve.py"),
        "serve: limits.max_texts is ignored (a fixed cap instead)",
        "issue28",
    ),
    Mutation(
        "trunk-key-without-padding",
        PKG + "training/feature_cache.py",
        '"keep_padding": keep_padding,\n        "device_type"',
        '"keep_padding": False,\n        "device_type"',
        ("tests/training/test_trunk_store_safety.py -k key", "tests/training/test_trunk_store.py"),
        "the trunk store's key leaves out whether the padding is kept (pool=last and last_token rows share a key)",
        "issue28",
    ),
    Mutation(
        "trunk-prune-ignores-limit",
        PKG + "training/feature_cache.py",
        "            if total <= self.max_bytes:",
        "            if total <= 2 * self.max_bytes:",
        ("tests/training/test_trunk_store.py -k size_limit", "tests/training/test_trunk_store_safety.py"),
        "model.cache_max_gb: the cache is pruned only beyond twice the limit",
        "issue28",
    ),
    Mutation(
        "csv-text-column-ignored",
        PKG + "data/modules.py",
        "read_labelled_table(self.files[key], self.text_column, self.label_column, self.delimiter, data)",
        'read_labelled_table(self.files[key], "text", self.label_column, self.delimiter, data)',
        (OPTIONS + " -k csv", "tests/data/test_csv_data.py"),
        "data.text_column is ignored (the column named text is read)",
        "issue28",
    ),
    Mutation(
        "evaluate-label-column-ignored",
        PKG + "inference/evaluate.py",
        "table = read_labelled_table(file, column, label_column, sep, data, empty_texts=True)",
        'table = read_labelled_table(file, column, "label", sep, data, empty_texts=True)',
        (SERVING + " -k evaluate_model_dir_data_file_column_and_label_column", "tests/inference/test_predict.py"),
        "evaluate.py's label_column is ignored (the column named label is read)",
        "issue28",
    ),
    Mutation(
        "predict-column-ignored",
        PKG + "inference/predict.py",
        'column = column or "text"',
        'column = "text"',
        (SERVING + " -k input_file_and_column", "tests/inference/test_predict.py"),
        "predict.py's column= is ignored (the column named text is read)",
        "issue28",
    ),
    Mutation(
        "optimizer-class-ignored",
        PKG + "training/module.py",
        "optimizer = self.make_optimizer(params, fused=fused) if fused_ok else self.make_optimizer(params)",
        "optimizer = torch.optim.AdamW(params, **self.make_optimizer.keywords)",
        (OPTIONS + " -k optimizer", "tests/training/test_classifier.py -k optimizer"),
        "model.optimizer._target_ is ignored (AdamW with the node's arguments)",
        "issue28",
    ),
)
