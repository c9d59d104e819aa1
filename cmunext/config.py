"""One typed run configuration, loaded from YAML with `key=value` overrides.

Unknown keys and bad values fail with the dotted key that is at fault, so a typo
in a config never silently falls back to a default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import CmunextError

# the runtime/precision forms a served artifact can take (cmunext_serving/engines.py)
ServingForm = Literal["onnxruntime/fp32", "openvino/fp32", "openvino/bf16", "openvino/int8"]
SERVING_FORMS: tuple[ServingForm, ...] = ("onnxruntime/fp32", "openvino/fp32", "openvino/bf16", "openvino/int8")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    variant: Literal["cmunext_s", "cmunext", "cmunext_l"] = "cmunext_s"
    in_channels: int = Field(3, ge=1)
    num_classes: int = Field(1, ge=1)


# The validation expectations by name (cmunext/data/validate.py), for data.severity.
VALIDATION_CHECKS = ("min_samples", "has_mask", "has_image", "one_file_per_stem", "image_decodes", "mask_decodes",
                     "image_measured", "mask_measured", "sizes_match", "mask_binary", "channels", "width", "height",
                     "lesion_fraction", "unique_images")


class DataConfig(_Section):
    # Where the images come from: a folder in the project layout, or "synth" for generated data.
    source: str = "synth"
    synth_n: int = Field(120, ge=4)
    synth_seed: int = 0
    synth_normal_fraction: float = Field(0.0, ge=0, lt=1)  # the share of generated scans with no lesion
    synth_style: Literal["linear", "convex"] = "linear"  # how scans are made (cmunext/data/synth.py)
    # DVC revision of data.dvc to read ("workspace" = the files as they are on disk).
    revision: str = "workspace"
    image_size: int = Field(256, ge=16, multiple_of=16)
    split_ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 41
    # A frozen split: DIR/splits.json of the dataset when present (`cmunext data split DIR`), or this file
    # (relative to the dataset, or absolute): {"train", "val", "test"} lists of stems, or nnU-Net's
    # splits_final.json with split_fold. Stems it names keep their split; new stems are assigned.
    split_file: str | None = None
    split_fold: int = Field(0, ge=0)
    augment: bool = True
    # "reference": the paper's rotate-90 and flips plus mild gain and noise; "ultrasound": only what a probe can
    # produce (small affine, scale, horizontal flip, gain, gamma, speckle): no rotation that puts the probe aside
    augment_policy: Literal["reference", "ultrasound"] = "reference"
    allow_empty_masks: bool = True
    min_samples: int = Field(10, ge=1)
    min_side: int = Field(32, ge=1)
    max_side: int = Field(4096, ge=1)
    max_foreground: float = Field(0.9, gt=0, le=1)
    # Byte-identical images: quarantine (default), merge, keep-one or fail (cmunext/data/duplicates.py).
    duplicates: Literal["quarantine", "merge", "keep-one", "fail"] = "quarantine"
    # A validation check's severity: "block" (default: the run stops) or "warn" (reported, the run goes on).
    severity: dict[str, Literal["block", "warn"]] = {}

    @model_validator(mode="after")
    def _ratios(self) -> "DataConfig":
        unknown = sorted(set(self.severity) - set(VALIDATION_CHECKS))
        if unknown:
            raise ValueError(f"data.severity: unknown check {unknown}; the checks are {', '.join(VALIDATION_CHECKS)}")
        if any(r < 0 for r in self.split_ratios) or abs(sum(self.split_ratios) - 1) > 1e-6:
            raise ValueError(f"data.split_ratios must be three non-negative numbers summing to 1, got {self.split_ratios}")
        if self.split_ratios[0] == 0 or self.split_ratios[1] == 0:
            raise ValueError("data.split_ratios needs non-empty train and validation parts")
        return self


class TrainConfig(_Section):
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    poly_power: float = Field(0.9, ge=0)
    # The recipe around the network (cmunext/engine/recipe.py; measured in docs/results/busi-ablation.md): the
    # paper's SGD with a poly schedule by default; AdamW, a cosine schedule, a linear warm-up, a moving average.
    optimizer: Literal["sgd", "adamw"] = "sgd"
    schedule: Literal["poly", "cosine"] = "poly"
    warmup_epochs: int = Field(0, ge=0)
    ema_decay: float = Field(0.0, ge=0, lt=1)  # 0: no moving average of the weights
    lovasz_weight: float = Field(0.0, ge=0)  # weight of a Lovász hinge (an IoU surrogate) added to the loss; 0: none
    # Weight of the mean loss of training-only side heads on decoder levels 1-3 (cmunext/models/deep_supervision.py);
    # the served network is unchanged. 0: none
    deep_supervision: float = Field(0.0, ge=0)
    # An ensemble of fold models, served as one network (cmunext/engine/ensemble.py): the train split is cut into
    # `folds` grouped folds, member i trains on the others and picks its best epoch on fold i, and the first
    # `ensemble` members' logits are averaged. 1: one model on the whole train split, its epoch chosen on validation.
    ensemble: int = Field(1, ge=1)
    folds: int = Field(0, ge=0)
    seed: int = 41
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # mixed precision, used on CUDA only
    # When fewer than this share of training images have a lesion (sets of mostly normal images), each
    # epoch draws images with weights that bring lesions up to this share; otherwise a plain permutation.
    min_lesion_share: float = Field(0.5, ge=0, le=1)
    workers: int = Field(0, ge=0)
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0 = torch's default
    # More than one process: the train step runs torchrun (DDP), one process per GPU (or CPU process).
    processes: int = Field(1, ge=1)
    # On a cluster: the train step's pod asks for this many accelerators of this type
    # (e.g. "nvidia.com/gpu"); 0 = none. Also sets `processes` when that is left at 1.
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_count: int = Field(0, ge=0)
    cpu_request: str = "2"
    memory_request: str = "8Gi"

    @model_validator(mode="after")
    def _members_need_folds(self) -> "TrainConfig":
        if self.folds == 1:
            raise ValueError("train.folds: 0 (no folds) or at least 2")
        if self.ensemble > 1 and self.folds < self.ensemble:
            raise ValueError(f"train.ensemble: {self.ensemble} fold models asked for, but train.folds={self.folds} "
                             f"trains at most {self.folds}; set train.folds to at least {self.ensemble}")
        return self


class EvalConfig(_Section):
    threshold: float = Field(0.5, gt=0, lt=1)
    latency_runs: int = Field(50, ge=5)
    latency_warmup: int = Field(5, ge=0)
    bootstrap: int = Field(1000, ge=100)
    gallery_size: int = Field(4, ge=0)
    # The served form (cmunext/serving/precision.py): each of serving_forms is timed on this machine, the
    # reduced precisions are scored on the test split as they run, and the fastest whose test IoU is at most
    # max_precision_iou_drop below fp32's ships (int8 calibrated on calibration_images training images).
    serving_forms: list[ServingForm] = Field(default_factory=lambda: list(SERVING_FORMS), min_length=1)
    max_precision_iou_drop: float = Field(0.005, ge=0, le=1)
    calibration_images: int = Field(32, ge=1)
    # K-fold grouped cross-validation on the images outside the test split (K extra trainings), reported
    # beside the held-out test figure; 0 = off (cmunext/cross_validation.py).
    cv_folds: int = Field(0, ge=0)
    # Test-time augmentation inside the served graph (cmunext/models/tta.py): "hflip" averages the image's and its
    # mirror's logits, in evaluation, export and serving alike, at about twice the compute
    tta: Literal["none", "hflip"] = "none"
    # Whether an image shows a lesion at all (cmunext_serving/lesion_rule.py): "validation" chooses a peak-probability
    # and region-size rule on the validation split, which the evaluation and the served form both apply; "off"
    # keeps the plain threshold. A chosen rule finds as many validation lesion images as none, less this share.
    lesion_rule: Literal["validation", "off"] = "validation"
    lesion_rule_max_sensitivity_drop: float = Field(0.0, ge=0, le=1)
    # "validation": a lesion image's mask is cut to its largest region when that raises the validation IoU (the
    # choice is part of the rule above: recorded with the model, applied alike in evaluation and serving); "off": never
    largest_region: Literal["validation", "off"] = "off"

    @field_validator("lesion_rule", "largest_region", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    @model_validator(mode="after")
    def _folds(self) -> "EvalConfig":
        if self.cv_folds == 1:
            raise ValueError("eval.cv_folds: 0 (off) or at least 2")
        return self


class GateConfig(_Section):
    min_iou: float = Field(0.5, ge=0, le=1)
    max_latency_ms: float = Field(500.0, gt=0)
    # The challenger may not be worse than the champion with 95% confidence:
    # the lower CI bound of (challenger - champion) IoU must be >= -iou_tolerance.
    iou_tolerance: float = Field(0.02, ge=0)
    max_latency_ratio: float = Field(1.5, gt=0)
    # Optional checks of what one mean IoU hides (cmunext.evaluation.breakdown); unset = not checked.
    min_lesion_iou: float | None = Field(None, ge=0, le=1)             # mean IoU over images with a lesion
    min_detection_sensitivity: float | None = Field(None, ge=0, le=1)  # lesion images with any lesion predicted
    min_detection_specificity: float | None = Field(None, ge=0, le=1)  # normal images predicted empty
    # With a champion: on this class's test images, the lower CI bound of (challenger - champion) IoU
    # must be >= -class_iou_tolerance (non-inferiority on, say, malignant lesions).
    noninferior_class: str | None = None
    class_iou_tolerance: float = Field(0.05, ge=0)
    # The live gate (docs/rollout.md): when any is set, a model that passes everything above becomes `candidate`,
    # not champion; `cmunext registry promote-shadowed VERSION` promotes it once its shadow figures meet these.
    shadow_min_requests: int | None = Field(None, ge=1)            # answered copies at least
    shadow_min_agreement: float | None = Field(None, ge=0, le=1)   # mean mask IoU with the champion
    shadow_max_latency_ratio: float | None = Field(None, gt=0)     # candidate p95 / champion p95 (servers' own times)
    shadow_max_errors: int | None = Field(None, ge=0)              # failed copies at most

    # A canary (docs/rollout.md: Flagger on Kubernetes, `cmunext serve --canary` on one machine) is rolled back
    # when, over one interval with at least canary_min_requests of its requests, its error rate or its p95 latency
    # against the champion's exceeds these; on Kubernetes its weight steps through canary_step_weights.
    canary_step_weights: list[int] = Field(default_factory=lambda: [10, 25, 50])
    canary_interval_s: int = Field(60, ge=1)
    canary_min_requests: int = Field(10, ge=1)
    canary_max_error_rate: float = Field(0.05, ge=0, le=1)
    canary_max_latency_ratio: float = Field(1.5, gt=0)

    @model_validator(mode="after")
    def _ascending_weights(self) -> GateConfig:
        w = self.canary_step_weights
        if not w or any(not 0 < x <= 100 for x in w) or w != sorted(set(w)):
            raise ValueError(f"gate.canary_step_weights must be ascending percentages in 1..100, e.g. [10, 25, 50]; "
                             f"got {w}")
        return self

    @property
    def live(self) -> bool:
        """Whether promotion waits for shadow figures."""
        return any(v is not None for v in (self.shadow_min_requests, self.shadow_min_agreement,
                                           self.shadow_max_latency_ratio, self.shadow_max_errors))


class RegistryConfig(_Section):
    model_name: str = "cmunext"
    # Where each version's .bento archive is kept for deployments (cmunext/serving/store.py): a folder or
    # s3://bucket/prefix; $CMUNEXT_BENTO_STORE overrides; default <state folder>/bento-store.
    bento_store: str | None = None


class RetrainConfig(_Section):
    """When `retrain --if-changed` (and every scheduled run) retrains: on a new data digest, on new
    code, or when the champion is older than this."""
    max_champion_age_days: float = Field(30.0, gt=0)


class MonitoringConfig(_Section):
    """What the served model sees against its reference (`cmunext monitor drift`, cmunext/monitoring/)."""
    # The prediction log's root: a folder or s3://bucket/prefix; default: what the server writes to
    # ($CMUNEXT_PREDICTION_LOG, else <bento store>/predictions).
    prediction_log: str | None = None
    # Family-wise false-alarm rate of one drift check: each of its tests runs at p_value / number of tests.
    p_value: float = Field(0.01, gt=0, lt=1)
    min_requests: int = Field(50, ge=5)  # fewer in the window: no verdict (too few to decide)
    # Corrections (`cmunext data feedback import`) since the champion was trained that make `retrain --if-changed`
    # train; fewer, and nothing else changed, waits for more (one correction is not worth a training run).
    min_feedback: int = Field(20, ge=1)


class RunConfig(_Section):
    name: str = "run"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    gate: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()
    retrain: RetrainConfig = RetrainConfig()
    monitoring: MonitoringConfig = MonitoringConfig()


class ConfigError(CmunextError, ValueError):
    """A config file or override is invalid; the message names the key at fault."""


def _format(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings; values are parsed as YAML scalars (`3`, `0.5`, `true`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    raw: dict = {}
    origin = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        origin = str(path)
    raw = apply_overrides(raw, overrides or [])
    if overrides:
        origin += " with " + " ".join(overrides)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err, origin)) from None


def config_to_dict(cfg: RunConfig) -> dict:
    return cfg.model_dump(mode="json")


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
