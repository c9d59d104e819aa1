"""The typed hand-offs between pipeline steps: what evaluate, gate, package and infra-validate produce, as the
steps, the gate, the CLI and the components read them. Each is validated where it is read, so a malformed
artifact fails naming the field, not as a KeyError three calls later. Details that only reports and MLflow
read (per-image rows, breakdowns, candidate timings) ride along as extra fields."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from cmunext_serving.lesion_rule import LesionRule


class _Contract(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


class Estimate(_Contract):
    value: float
    ci95_low: float | None = None
    ci95_high: float | None = None


class Latency(_Contract):
    p95_ms: float
    p50_ms: float | None = None
    artifact: str = ""         # runtime/precision:graph of the form measured
    fp32_p95_ms: float | None = None  # the same model in ONNX Runtime fp32 (the champion ratio compares these)


class ChampionComparison(_Contract):
    version: str | int
    run_id: str | None = None
    latency: Latency
    comparison: dict  # iou_diff (an Estimate) and the images compared
    classes: dict = {}

    @property
    def iou_diff(self) -> Estimate:
        return Estimate.model_validate(self.comparison["iou_diff"])


class Evaluation(_Contract):
    """The evaluate step's result (cmunext.steps.evaluate)."""
    metrics: dict[str, Estimate]
    latency: Latency
    images: int = 0
    split: str = "test"
    per_image: list[dict] = []
    breakdown: dict | None = None
    champion: ChampionComparison | None = None
    cross_validation: dict | None = None
    lesion_rule: dict | None = None  # cmunext/no_lesion.py: {"rule": LesionRule's fields, "chosen_on", "reason", ...}

    @property
    def iou(self) -> float:
        return self.metrics["iou"].value

    def rule(self, threshold: float) -> LesionRule:
        """How the evaluated masks were made, which the served form repeats (THRESHOLD alone for older records)."""
        return LesionRule.from_dict((self.lesion_rule or {}).get("rule"), threshold)


class GateCheck(_Contract):
    message: str
    name: str = ""
    passed: bool = True
    value: float = float("nan")
    threshold: float = float("nan")
    margin: float = float("nan")


class GateDecision(_Contract):
    """The gate's decision (cmunext.gate.decide)."""
    decision: Literal["promote", "reject"]
    reasons: list[str]
    checks: list[GateCheck] = []
    champion_version: str | None = None
    passed: bool | None = None


class PackageResult(_Contract):
    """The package step's bento: where its archive is, in the step's output and in the bento store."""
    bento_tag: str
    archive: str
    bento_uri: str = ""
    bento_sha256: str = ""
    sha256: str = ""  # the serving artifact's, which the evaluate step timed
    format: str = ""
    runtime: str = "onnxruntime"  # what the bento runs the artifact in (cmunext_serving/engines.py)
    precision: str = "fp32"
    fallback: dict | None = None  # for bf16: the fp32 form a CPU without bf16 runs


class InfraValidation(_Contract):
    """Infra-validation's verdict on a booted bento (cmunext.infra_validation.validate_bento)."""
    passed: bool
    reasons: list[str] = []
    summary: str | None = None
    latency_ms: dict | None = None
    ready_s: float | None = None
    served: dict | None = None  # the runtime and precision the booted bento reported


class Promotion(_Contract):
    """The promote step's outcome (cmunext.steps.promote): a stale refusal is an outcome, not a failure; with a live
    gate (gate.shadow_*), a model that passed becomes `candidate`."""
    event: Literal["promoted", "already_registered", "stale", "candidate"]  # candidate: waits for the live gate
    model: str
    version: str
    reason: str = ""
    champion: str | None = None   # the champion once the step ended (for "stale": the one that moved in)
    replaced: str | None = None   # the champion this promotion replaced
