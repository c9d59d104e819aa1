"""Runs on a Kubeflow Pipelines cluster: one run now (`submit`) or a recurring run (`schedule`).

The pipeline is compiled from the same code as local runs, with the config's train resources and the
component image of images.conf (or $CMUNEXT_COMPONENT_IMAGE). Credentials never travel as parameters: the tasks
read them from Kubernetes Secrets (pipelines/platform.py); the API token for the KFP endpoint comes
from $KFP_TOKEN. Scheduled runs pass `if_changed`, so each one retrains only when the data, the code
or the champion's age call for it, and otherwise ends after its first step.
"""
from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path

from cmunext.config import RunConfig
from cmunext.errors import CmunextError

from .run import PROJECT_ROOT, compile_pipeline, pipeline_arguments

log = logging.getLogger(__name__)
DEFAULT_EXPERIMENT = "cmunext"


class ClusterError(CmunextError):
    """The run cannot be sent to the cluster; the message says what to change."""


def kfp_cron(expression: str) -> str:
    """KFP's scheduler wants six fields (seconds first); accept the usual five."""
    fields = expression.split()
    if len(fields) == 5:
        return "0 " + expression.strip()
    if len(fields) == 6:
        return expression.strip()
    raise ClusterError(f"--cron {expression!r}: expected 5 fields (min hour day month weekday), e.g. '0 3 * * 0'")


def project_repository(explicit: str | None) -> str:
    """The git URL the cluster reads data.dvc from: --project-repo, else this checkout's origin."""
    if explicit:
        return explicit
    proc = subprocess.run(["git", "remote", "get-url", "origin"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ClusterError("data.revision names a git revision, but this checkout has no 'origin' remote: "
                           "pass --project-repo URL (the repository the cluster can clone)")
    return proc.stdout.strip()


def cluster_arguments(cfg: RunConfig, *, if_changed: bool, project_repo: str | None) -> dict:
    """Pipeline parameters for a cluster run. Local folders do not exist there: data comes from a DVC
    revision (read from the project repository and its remote) or is generated (source: synth)."""
    if cfg.data.revision in ("", "workspace"):
        if cfg.data.source != "synth":
            raise ClusterError(f"data.source is the local folder {cfg.data.source!r}, which a cluster cannot read: "
                               "version it (cmunext data version), push, and run with --set data.revision=<git rev>")
        root = "."
    else:
        root = project_repository(project_repo)
    # data_md5 is left empty: the run's first step measures the data when it runs, not when it was sent
    return pipeline_arguments(cfg, data_md5="", if_changed=if_changed, project_root=root)


def client(host: str, namespace: str | None = None):
    import kfp
    return kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=os.environ.get("KFP_TOKEN"))


def _compiled(cfg: RunConfig, workdir: str) -> str:
    # a cluster cannot pull this machine's images: the tasks would never start
    from cmunext.containers.images import IMAGES_CONF, component_image
    image = component_image()
    if image.startswith("localhost/"):
        raise ClusterError(f"the component image {image} exists only on this machine: push `make images` to your "
                           f"registry and set REGISTRY in {IMAGES_CONF.relative_to(PROJECT_ROOT)} (or set "
                           "CMUNEXT_COMPONENT_IMAGE to the pushed image); see docs/deploy.md")
    return str(compile_pipeline(Path(workdir) / "cmunext-training.yaml", cfg))


def _experiment_id(kfp_client, name: str, namespace: str | None) -> str:
    return kfp_client.create_experiment(name, namespace=namespace).experiment_id  # gets it if it exists


def submit(cfg: RunConfig, host: str, *, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
           namespace: str | None = None, project_repo: str | None = None, if_changed: bool = False) -> dict:
    """One run now; returns {run_id, experiment_id, url}."""
    args = cluster_arguments(cfg, if_changed=if_changed, project_repo=project_repo)
    with tempfile.TemporaryDirectory(prefix="cmunext-submit-") as tmp:
        package = _compiled(cfg, tmp)
        kfp_client = client(host, namespace)
        experiment_id = _experiment_id(kfp_client, experiment, namespace)
        run = kfp_client.run_pipeline(experiment_id, run_name or f"{cfg.name}-{cfg.model.variant}",
                                      pipeline_package_path=package, params=args, enable_caching=True)
    return {"run_id": run.run_id, "experiment_id": experiment_id, "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}


def schedule(cfg: RunConfig, host: str, cron: str, *, experiment: str = DEFAULT_EXPERIMENT, name: str | None = None,
             namespace: str | None = None, project_repo: str | None = None) -> dict:
    """A recurring run on CRON (one at a time, no catch-up of missed slots); each run checks for changes
    first. Returns {recurring_run_id, experiment_id, cron}."""
    expression = kfp_cron(cron)
    args = cluster_arguments(cfg, if_changed=True, project_repo=project_repo)
    with tempfile.TemporaryDirectory(prefix="cmunext-schedule-") as tmp:
        package = _compiled(cfg, tmp)
        kfp_client = client(host, namespace)
        experiment_id = _experiment_id(kfp_client, experiment, namespace)
        job = kfp_client.create_recurring_run(
            experiment_id, name or f"{cfg.name}-retrain", description="cmunext scheduled retraining (if changed)",
            cron_expression=expression, max_concurrency=1, no_catchup=True, params=args,
            pipeline_package_path=package, enable_caching=True)
    return {"recurring_run_id": job.recurring_run_id, "experiment_id": experiment_id, "cron": expression}
