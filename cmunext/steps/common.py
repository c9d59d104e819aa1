"""What every step shares: how it logs inside a kfp task, how it refuses, and the names of the records it leaves."""
from __future__ import annotations

import logging

from ..errors import CmunextError

DUPLICATES_REPORT = "duplicates.json"  # beside images/ and masks/ in the dataset and preprocessed artifacts
SPLIT_ARTIFACT = "data/splits.json"  # in every training run's MLflow artifacts


class StepFailed(CmunextError):
    """A step refused to continue; the message says why (e.g. the data failed validation)."""


def log_to_stderr() -> None:
    """Inside a kfp task nothing configures logging; the per-epoch lines are the step's progress."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
