"""Package a registered model version for serving: ONNX artifact -> BentoML model -> bento -> .bento archive.

The bento holds the torch-free serving package `cmunext_serving` whole, exact pins of its packages taken from
this environment (the inference runtimes only where the artifact's runtime or its fallback needs them), and
build arguments naming the model and its sha256, so the bento always serves the model it was built with.
Stores live in $BENTOML_HOME, by default <state folder>/bentoml.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING

from cmunext_serving.engines import serving_record
from cmunext_serving.fingerprint import sha256_file
from cmunext_serving.lesion_rule import LesionRule
from cmunext_serving.runtime import EXPORT_JSON, verify_artifact

from ..errors import CmunextError
from ..paths import state_dir

if TYPE_CHECKING:
    from bentoml._internal.models import ModelStore

log = logging.getLogger(__name__)

MODEL_NAME = "cmunext-segmenter"   # the BentoML model name (the MLflow name is in its labels)
BENTO_NAME = "cmunext-service"
BUNDLE = "cmunext_serving"         # the torch-free serving package, included whole
SERVICE = f"{BUNDLE}.service:Segmenter"
SERVING_PACKAGES = ("numpy", "pillow", "opencv-python-headless")


class ExportError(CmunextError, RuntimeError):
    """The bento was built but could not be written to its remote destination; the message names the endpoint."""


def _export_failure(bento_tag: str, target: str, exc: Exception) -> ExportError:
    """A message naming the destination, the S3 endpoint and the cause. botocore has already retried what is safe
    to retry (connection errors, throttling, 5xx: AWS_MAX_ATTEMPTS, default 5, with backoff); refused credentials
    and missing buckets are not retried."""
    from ..storage_errors import classify

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS's default S3 endpoint"
    kind, _ = classify(exc)
    cause = STORAGE_CAUSES.get(kind, type(exc).__name__)
    return ExportError(f"bento {bento_tag} was built (kept in {bentoml_home()}) but exporting it to {target} at "
                       f"{endpoint} failed: {cause} ({type(exc).__name__}: {exc})")


# what each kind of storage error (cmunext/storage_errors.py) means for a write to S3
STORAGE_CAUSES = {
    "unreachable": "nothing answers there (after botocore's retries): is the S3 server running and the endpoint right?",
    "auth": "it refused the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment)",
    "nocreds": "no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
    "nobucket": "the bucket does not exist",
    "missing": "the bucket does not exist",
    "server": "the S3 server answered HTTP 5xx after botocore's retries; its log says why",
}


def bentoml_home() -> Path:
    """$BENTOML_HOME, set to <state folder>/bentoml when unset (before bentoml reads it)."""
    if not os.environ.get("BENTOML_HOME"):
        os.environ["BENTOML_HOME"] = str(state_dir() / "bentoml")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    home = Path(os.environ["BENTOML_HOME"]).resolve()
    for sub in ("models", "bentos", "tmp", "envs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return home


def stores():
    """(model store, bento store) of bentoml_home(), built explicitly so an earlier BENTOML_HOME in this
    process cannot send anything elsewhere."""
    home = bentoml_home()
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.models import ModelStore
    return ModelStore(str(home / "models")), BentoStore(str(home / "bentos"))


def serving_requirements(runtimes: tuple[str, ...] = ("onnxruntime",)) -> list[str]:
    """Exact pins of the serving image's packages, as installed here (no torch, no CUDA wheels): the image
    libraries and the packages of RUNTIMES."""
    pins = []
    for name in (*SERVING_PACKAGES, *dict.fromkeys(runtimes)):  # a runtime's name is its package's
        candidates = [name] if name != "opencv-python-headless" else [name, "opencv-python", "opencv-contrib-python-headless"]
        for dist in candidates:
            try:
                pins.append(f"{name}=={importlib_metadata.version(dist)}")
                break
            except importlib_metadata.PackageNotFoundError:
                continue
        else:
            raise RuntimeError(f"{name} is not installed; the serving requirements are pinned from this environment")
    return pins


def stage_bundle(target: str | Path) -> Path:
    """Copy the serving package `cmunext_serving/` whole (its .py files) under TARGET."""
    import cmunext_serving
    source = Path(cmunext_serving.__file__).resolve().parent
    shutil.rmtree(Path(target) / BUNDLE, ignore_errors=True)
    shutil.copytree(source, Path(target) / BUNDLE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return Path(target)


def _jsonable(value):
    """VALUE as plain JSON types, without None entries (BentoML's metadata refuses None)."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if x is not None}
        return [strip(x) for x in v] if isinstance(v, list) else v
    return strip(json.loads(json.dumps(value, default=float)))


def _build(ctx: Path, config: dict, home: Path) -> str:
    import yaml
    (ctx / "bentofile.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("CMUNEXT_BENTO_MODEL", None)  # the build arguments choose the model
    proc = subprocess.run([sys.executable, "-m", "bentoml", "build", str(ctx), "-f", str(ctx / "bentofile.yaml"),
                           "-o", "tag"], cwd=ctx, env=env, capture_output=True, text=True)
    tags = [line.split("__tag__:", 1)[1].strip() for line in proc.stdout.splitlines() if "__tag__:" in line]
    if proc.returncode != 0 or not tags:
        raise RuntimeError(f"bentoml build failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return tags[-1]


def _reusable_export(folder, weights, tta: str) -> dict | None:
    """export.json of FOLDER if it was exported from exactly WEIGHTS in the serving form TTA and its artifact is
    intact, else None."""
    if folder is None or not (Path(folder) / EXPORT_JSON).exists():
        return None
    info = json.loads((Path(folder) / EXPORT_JSON).read_text())
    if info.get("weights_sha256") != sha256_file(weights) or info.get("tta", "none") != tta:
        return None
    verify_artifact(folder)  # raises if the artifact was changed since it was measured
    return info


def export_archive(bento_tag: str, export_to: str | None = None) -> str:
    """Export BENTO_TAG as a .bento archive to <state>/bentos/, a folder, a file path or an s3:// URL (credentials
    and endpoint from the environment); returns where it went. A remote failure raises ExportError."""
    import bentoml

    model_store, bento_store = stores()
    if export_to is not None and "://" in export_to:
        target = export_to  # e.g. s3://bucket/prefix/ (credentials and endpoint from the environment)
    else:  # bentoml export with a relative path writes under / : always pass an absolute one
        folder = Path(export_to or state_dir() / "bentos").expanduser().resolve()
        if export_to is None or export_to.endswith(("/", os.sep)) or folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            target = str(folder) + "/"
        else:
            folder.parent.mkdir(parents=True, exist_ok=True)
            target = str(folder)
    if "://" in target:  # fsspec caches filesystems by their arguments: without this, a process would keep the
        import fsspec  # endpoint and keys of its first export instead of reading the environment each time
        fsspec.get_filesystem_class(target.split("://", 1)[0]).clear_instance_cache()
    from bentoml._internal.configuration.containers import BentoMLContainer
    try:
        # the export copies the bento's models from the container's model store, which bentoml fixed at this
        # process's first use: point it at this home's store, or a second home's models are "not found"
        with BentoMLContainer.model_store.patch(model_store):
            written = bentoml.export_bento(bento_tag, target, _bento_store=bento_store)
    except Exception as exc:  # a remote store's raw errors (a bare PermissionError for bad keys) name nothing
        if "://" not in target:
            raise
        raise _export_failure(bento_tag, target, exc) from exc
    return f"{target.split('://', 1)[0]}://{written}" if "://" in target else str(Path(written).resolve())


def _artifact_in(folder: Path, weights: str | Path, exported: str | Path | None, tolerance: float,
                 runs: int, tta: str) -> dict:
    """The serving artifact in FOLDER: EXPORTED copied as it is when it was exported from these same WEIGHTS (so
    the bento serves the artifact whose latency the gate judged), else a fresh export. Returns its export.json."""
    info = _reusable_export(exported, weights, tta)
    if info is None:
        from .export import export_serving_artifact  # torch and onnx: only when there is something to export
        info = export_serving_artifact(weights, folder, tolerance=tolerance, runs=runs, tta=tta)
    else:
        shutil.copytree(exported, folder)
    return info


def _model_metadata(info: dict, record: dict, artifact_labels: dict, metrics: dict) -> dict:
    """The BentoML model's metadata: its labels, the evaluation's METRICS and what the export measured."""
    return _jsonable({
        **artifact_labels, "metrics": metrics, "file": info["file"], "image_size": info["image_size"],
        "in_channels": info["in_channels"], "num_classes": info["num_classes"], "variant": info["variant"],
        "weights_sha256": info["weights_sha256"], "max_abs_diff": info["max_abs_diff"],
        "session": info["session"], "candidates_ms": {k: v["ms"] for k, v in info["candidates"].items()},
        "serving": record, "precision_choice": info.get("precision_choice"), "tta": info.get("tta", "none"),
        "members": info.get("members", 1),
    })


def _store_model(artifact: Path, info: dict, artifact_labels: dict, metadata: dict,
                 model_store: ModelStore) -> str:
    """Store ARTIFACT's model file and export.json as a BentoML model in MODEL_STORE; returns its tag."""
    import bentoml

    with bentoml.models.create(MODEL_NAME, labels=artifact_labels, metadata=metadata,
                               _model_store=model_store) as bento_model:
        for name in (info["file"], "export.json"):
            shutil.copyfile(artifact / name, bento_model.path_of(name))
    model_tag = str(bento_model.tag)
    log.info("package: BentoML model %s (%s, sha256 %s)", model_tag, info["format"], info["sha256"][:12])
    return model_tag


def _bentofile(*, model_name: str, model_version: str | int, info: dict, record: dict, artifact_labels: dict,
               model_tag: str, runtimes: tuple[str, ...], rule: LesionRule) -> dict:
    """bentofile.yaml's content: the whole serving package, pins of its packages (RUNTIMES' included) and build
    arguments naming the model and its sha256, so the bento always serves the model it was built with."""
    return {
        "service": SERVICE,
        "name": BENTO_NAME,
        "description": f"CMUNeXt lesion segmentation: {model_name} version {model_version} ({record['runtime']} "
                       f"{record['precision']}, {info['format']})",
        "labels": {**artifact_labels, "model_tag": model_tag},
        "include": [f"/{BUNDLE}/**/*.py"],
        "exclude": ["__pycache__/", "*.pyc"],
        "python": {"packages": serving_requirements(runtimes), "lock_packages": False},
        "args": {"model": model_tag, "sha256": info["sha256"], "threshold": rule.threshold},
    }


def package_model(weights: str | Path, *, model_name: str, model_version: str | int, run_id: str,
                  data_revision: str, metrics: dict, export_to: str | None = None, tolerance: float = 1e-4,
                  runs: int = 30, exported: str | Path | None = None, rule: LesionRule = LesionRule(),
                  tta: str = "none") -> dict:
    """Export WEIGHTS, store the artifact as a BentoML model, build a bento and export it as a .bento archive
    (to <state>/bentos/, or to EXPORT_TO: a folder, a file path or an s3:// URL).

    EXPORTED, an artifact folder that export_serving_artifact already wrote for these same weights (the
    evaluate step's, whose latency the gate judged), is packaged as it is instead of exporting again. RULE (the
    evaluation's threshold and lesion-free rule) is the one the service turns probabilities into masks with; TTA
    (eval.tta) the serving form the artifact is exported in.

    Returns {"bento_tag", "model_tag", "archive", "format", "sha256", ...}.
    """
    home = bentoml_home()  # sets BENTOML_HOME before bentoml is imported and reads it
    model_store, _ = stores()
    labels = {"mlflow_model": str(model_name), "mlflow_version": str(model_version), "run_id": str(run_id),
              "data_revision": str(data_revision)}
    with tempfile.TemporaryDirectory(prefix="cmunext-package-", dir=home / "tmp") as tmp:
        tmp = Path(tmp)
        info = _artifact_in(tmp / "artifact", weights, exported, tolerance, runs, tta)
        record = serving_record(info)
        fallback = record.get("fallback") or {}
        runtimes = tuple(r for r in (record["runtime"], fallback.get("runtime")) if r)
        artifact_labels = {**labels, "sha256": info["sha256"], "format": info["format"], "runtime": record["runtime"],
                           "precision": record["precision"]}
        metadata = {**_model_metadata(info, record, artifact_labels, metrics), "lesion_rule": rule.as_dict()}
        model_tag = _store_model(tmp / "artifact", info, artifact_labels, metadata, model_store)

        ctx = stage_bundle(tmp / "context")
        bento_tag = _build(ctx, _bentofile(model_name=model_name, model_version=model_version, info=info,
                                           record=record, artifact_labels=artifact_labels, model_tag=model_tag,
                                           runtimes=runtimes, rule=rule), home)
    log.info("package: bento %s", bento_tag)

    archive = export_archive(bento_tag, export_to)
    log.info("package: exported %s to %s", bento_tag, archive)
    return {"bento_tag": bento_tag, "model_tag": model_tag, "archive": archive, "format": info["format"],
            "runtime": record["runtime"], "precision": record["precision"], "fallback": record.get("fallback"),
            "sha256": info["sha256"], "max_abs_diff": info["max_abs_diff"], "candidates_ms": metadata["candidates_ms"]}
