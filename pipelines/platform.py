"""Kubernetes settings for the pipeline's tasks (kfp-kubernetes): credentials from Secrets and endpoints
from a ConfigMap as environment variables, never as pipeline parameters; resources and accelerators for
the train step. kfp.local ignores all of it, so the same pipeline runs on a laptop and on a cluster.

The Secrets and the ConfigMap are made by infra/k8s/pipeline-runtime (see docs/deploy.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from kfp import kubernetes

S3_SECRET = "cmunext-s3"
MLFLOW_SECRET = "cmunext-mlflow"
ENDPOINTS_CONFIG_MAP = "cmunext-endpoints"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# CMUNEXT_BENTO_STORE: the pods share no disk, so bentos and the promotion lease live in object storage
ENDPOINT_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "CMUNEXT_BENTO_STORE")


@dataclass(frozen=True)
class TrainResources:
    """What the train step's pod asks for (from the config's `train` section)."""
    cpu: str = "2"
    memory: str = "8Gi"
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_count: int = 0

    @classmethod
    def from_config(cls, train) -> "TrainResources":
        return cls(cpu=train.cpu_request, memory=train.memory_request, accelerator_type=train.accelerator_type,
                   accelerator_count=train.accelerator_count)


def with_credentials(task):
    """S3 and MLflow credentials and the service endpoints as env. The MLflow Secret is optional (an
    MLflow server without auth needs none); the S3 one is not."""
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_KEYS})
    kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {k: k for k in MLFLOW_KEYS}, optional=True)
    kubernetes.use_config_map_as_env(task, ENDPOINTS_CONFIG_MAP, {k: k for k in ENDPOINT_KEYS})
    return task


def with_train_resources(task, resources: TrainResources):
    task.set_cpu_request(resources.cpu).set_memory_request(resources.memory)
    # a pod's /dev/shm is 64 MiB: too small for DataLoader workers and DDP's shared-memory transfers
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    if resources.accelerator_count > 0:  # the step runs torchrun with one process per accelerator
        task.set_accelerator_type(resources.accelerator_type).set_accelerator_limit(resources.accelerator_count)
    return task
