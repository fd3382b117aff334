"""A CSVLogger that continues a resumed run's metrics.csv instead of deleting it."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger deletes an existing metrics.csv; this one keeps its rows and appends."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        previous = path.read_bytes() if path.is_file() else b""
        experiment = super().experiment  # creates the writer, which removes metrics.csv
        if previous:
            path.write_bytes(previous)
            experiment.metrics_keys = next(csv.reader(previous.decode().splitlines()), [])
        return experiment
