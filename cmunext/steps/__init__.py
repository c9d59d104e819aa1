"""The pipeline's steps as library functions, one module per stage. Each kfp component in `components/` parses
its inputs, calls one function here, and turns the result into kfp artifacts; tests call these directly. A step
that fails raises before it changes anything outside its own outputs; a designed refusal (the gate, a failed
infra-validation, a stale promotion) is a returned outcome, not an exception."""
from .common import DUPLICATES_REPORT, SPLIT_ARTIFACT, StepFailed
from .data import frozen_split, preprocess, snapshot_data, validate
from .decide import gate, promote, register
from .evaluate import evaluate
from .ship import infra_validate, package
from .train import train

__all__ = ["DUPLICATES_REPORT", "SPLIT_ARTIFACT", "StepFailed", "evaluate", "frozen_split", "gate",
           "infra_validate", "package", "preprocess", "promote", "register", "snapshot_data", "train", "validate"]
