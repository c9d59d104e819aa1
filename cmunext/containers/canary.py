"""The canary on Kubernetes (`cmunext deploy --canary`): Flagger's resources for the serving Deployment, written
from the config's gate.canary_* (the rule `cmunext serve --canary` applies on one machine). Flagger, not a router
of ours: with the NGINX ingress the cluster already uses, it copies the Deployment to `cmunext-serving-primary`,
shifts gate.canary_step_weights percent of the Ingress's traffic to the new pods one analysis interval at a time,
and rolls back when a check fails: the canary's 5xx rate (percent) or its p95 latency against the primary's, both
from the metrics BentoML already exports, which Prometheus scrapes. Argo Rollouts would replace the Deployment
with its own Rollout kind; Flagger leaves the Deployment, its probes, HPA and policies as they are.

Prometheus must label the scraped series with `namespace` and `pod` (the usual kubernetes_sd relabeling).
"""
from __future__ import annotations

from pathlib import Path

from ..config import GateConfig

FLAGGER = "flagger.app/v1beta1"
NAME, NAMESPACE = "cmunext-serving", "cmunext"
PROMETHEUS = "http://prometheus.monitoring:9090"
# the canary's pods (Flagger names them after the Deployment; the primary's are <name>-primary-...)
CANARY_PODS = 'namespace="{{ namespace }}", pod=~"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"'
PRIMARY_PODS = 'namespace="{{ namespace }}", pod=~"{{ target }}-primary-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"'
REQUESTS = "bentoml_service_request_total"
DURATION = "bentoml_service_request_duration_seconds_bucket"
API = 'endpoint=~"/segment|/segment_json|/overlay"'


def _p95(pods: str) -> str:
    return f"histogram_quantile(0.95, sum(rate({DURATION}{{{pods}, {API}}}[{{{{ interval }}}}])) by (le))"


def metric_templates(prometheus: str = PROMETHEUS) -> list[dict]:
    error_rate = (f'100 * sum(rate({REQUESTS}{{{CANARY_PODS}, {API}, http_response_code=~"5.."}}[{{{{ interval }}}}]))'
                  f" / sum(rate({REQUESTS}{{{CANARY_PODS}, {API}}}[{{{{ interval }}}}]))")
    latency_ratio = f"{_p95(CANARY_PODS)} / {_p95(PRIMARY_PODS)}"
    return [{"apiVersion": FLAGGER, "kind": "MetricTemplate",
             "metadata": {"name": name, "namespace": NAMESPACE},
             "spec": {"provider": {"type": "prometheus", "address": prometheus}, "query": query}}
            for name, query in (("cmunext-error-rate", error_rate), ("cmunext-latency-ratio", latency_ratio))]


def canary(gate: GateConfig) -> dict:
    """The Canary over the serving Deployment, its Ingress and HPA; the analysis from GATE."""
    interval = f"{gate.canary_interval_s}s"
    metrics = [
        {"name": "error-rate", "templateRef": {"name": "cmunext-error-rate", "namespace": NAMESPACE},
         "thresholdRange": {"max": round(100 * gate.canary_max_error_rate, 4)}, "interval": interval},
        {"name": "latency-ratio", "templateRef": {"name": "cmunext-latency-ratio", "namespace": NAMESPACE},
         "thresholdRange": {"max": gate.canary_max_latency_ratio}, "interval": interval}]
    return {"apiVersion": FLAGGER, "kind": "Canary", "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {"provider": "nginx",
                     "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
                     "ingressRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": NAME},
                     "autoscalerRef": {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                                       "name": NAME},
                     "progressDeadlineSeconds": 600,
                     "service": {"port": 80, "targetPort": "http", "portName": "http"},
                     "analysis": {"interval": interval, "threshold": 1, "stepWeights": list(gate.canary_step_weights),
                                  "metrics": metrics}}}


def resources(gate: GateConfig, prometheus: str = PROMETHEUS) -> list[dict]:
    return [*metric_templates(prometheus), canary(gate)]


def add_canary(manifests: Path, gate: GateConfig, prometheus: str = PROMETHEUS) -> list[dict]:
    """The rendered MANIFESTS with Flagger's resources added, and without the serving Service: Flagger makes it
    (and its -primary and -canary siblings) from the Canary's `service`. Returns the resources added."""
    import yaml

    docs = [d for d in yaml.safe_load_all(manifests.read_text()) if d]
    kept = [d for d in docs if not (d["kind"] == "Service" and d["metadata"]["name"] == NAME)]
    added = resources(gate, prometheus)
    manifests.write_text(yaml.safe_dump_all(kept + added, sort_keys=False))
    return added
