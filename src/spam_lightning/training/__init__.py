"""One training run, and many: everything that needs Lightning.

`run` (config -> data module, net, LightningModule, trainer -> fit, test, metrics.json; the DDP ranks' entry point),
`module` (SpamClassifier: freezing, the last-token loss, metrics, optimizer, the checkpoint record), `feature_cache`
(the frozen trunk's outputs, in memory and in the shared store on disk), `checkpoints` (atomic checkpoint IO, small
checkpoints, last.ckpt on a schedule), `runs` (run folders and their locks, the run's log and progress bars),
`trackers` (CSV, MLflow and W&B loggers), `ddp` (starting extra ranks), `sweeps` (multirun summary and the Optuna
sweeper) and `baseline` (the TF-IDF baseline on the same splits).
"""
