"""The `cmunext` command. Each subcommand imports its heavy dependencies lazily, so
`cmunext --help` and `import cmunext` stay fast."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from cmunext_serving.guard import TokenMissing

from .config import load_config
from .errors import CmunextError

log = logging.getLogger("cmunext")



def _config(args):
    return load_config(args.config, args.set)


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML run configuration (configs/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")


# ---- data -------------------------------------------------------------------------------------

def cmd_data_synth(args) -> int:
    from .data.synth import write_synthetic_dataset
    out = write_synthetic_dataset(args.out, args.n, args.seed, args.empty_fraction, progress=not args.quiet)
    print(f"wrote {args.n} synthetic image/mask pairs to {out}")
    return 0


def cmd_data_import(args) -> int:
    from .data.importers import import_dataset
    s = import_dataset(args.src, args.out, include_normal=args.include_normal, progress=not args.quiet)
    classes = ", ".join(f"{k} {v}" for k, v in s["classes"].items())
    state = "already up to date" if s["unchanged"] else "wrote"
    print(f"{s['out']}: {state} {s['pairs']} image/mask pairs from a {s['layout']} layout ({classes}); "
          f"{s['converted']} converted to PNG, {s['merged_masks']} with merged masks, {len(s['skipped'])} skipped")
    for item in s["skipped"][:20]:
        print(f"  skipped {item['file']}: {item['reason']}")
    if len(s["skipped"]) > 20:
        print(f"  ... and {len(s['skipped']) - 20} more")
    return 0


def cmd_data_version(args) -> int:
    from .data.versioning import version_data
    r = version_data(args.project, args.data, args.message)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(r["revision"])
        log.info("%s/: md5 %s, %d files, pushed to remote %r%s", args.data, r["md5"], r["files"], r["remote"],
                 "" if r["committed"] else " (unchanged: no new commit)")
    return 0


def cmd_data_remote(args) -> int:
    from .data.versioning import set_remote
    r = set_remote(args.project, args.url, args.endpoint_url, check=not args.no_check)
    print(f"default DVC remote {r['remote']!r}: {r['url']}" + (f" at {r['endpoint_url']}" if r["endpoint_url"] else "")
          + (f" (committed {r['revision'][:12]})" if r["revision"] else " (unchanged)"))
    return 0


def cmd_data_get(args) -> int:
    from .data.versioning import materialize
    r = materialize(args.project, args.revision, args.out, args.data, overwrite=args.overwrite)
    print(json.dumps(r, indent=1))
    return 0

def cmd_data_validate(args) -> int:
    from .data.validate import format_summary, validate_dataset
    d = load_config(args.config, args.set).data
    # the folder is only read: the duplicates policy says what a run would leave out or merge
    summary = validate_dataset(args.dir, args.report, min_samples=d.min_samples, min_side=d.min_side,
                               max_side=d.max_side, allow_empty_masks=d.allow_empty_masks,
                               max_foreground=d.max_foreground, duplicates=d.duplicates, severity=d.severity,
                               progress=not args.quiet)
    print(format_summary(summary))
    return 0 if summary["success"] else 1


def cmd_data_split(args) -> int:
    from .data.duplicates import read_classes
    from .data.split import make_split, read_split_file, write_split
    out = Path(args.out) if args.out else Path(args.dir) / "splits.json"
    existing = read_split_file(out) if out.is_file() else None
    split = make_split(args.dir, tuple(args.ratios), args.seed, existing=existing, classes=read_classes(Path(args.dir)))
    write_split(split, out)
    info = split["info"]
    print(f"{out}: train {len(split['train'])}, val {len(split['val'])}, test {len(split['test'])}; "
          f"{info['kept']} kept where they were, {info['assigned']} assigned now"
          + (f", {len(info['gone'])} no longer in the data" if info["gone"] else "")
          + (", stratified by class (mapping.csv)" if info["stratified"] else "")
          + f" ({info['groups']} groups, {info['near_duplicate_groups']} near-duplicate groups "
          f"holding {info['images_in_near_duplicate_groups']} images)")
    return 0


# ---- train / predict --------------------------------------------------------------------------

def cmd_train(args) -> int:
    from .engine.trainer import train
    from .prepare import prepare
    cfg = _config(args)
    data_dir = Path(args.data) if args.data else prepare(cfg)[0]
    result = train(cfg, data_dir, args.out, resume=args.resume)
    print(json.dumps({"weights": str(result.weights), "best_epoch": result.best_epoch,
                      "best_val_iou": round(result.best_val_iou, 4),
                      "images_per_second": round(result.images_per_second, 2)}, indent=1))
    return 0


def cmd_predict(args) -> int:
    from .predict import predict_files
    written = predict_files(args.images, args.model, args.out, args.threshold)
    print(f"wrote {len(written)} masks and overlays to {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    import tempfile

    from .config import RunConfig
    from .data.duplicates import read_classes
    from .data.layout import list_pairs
    from .evaluation import breakdown, latency_ms, score_images, summarize
    from .predict import Predictor
    from .serving_artifact import serving_runner

    cfg = load_config(args.config, args.set) if args.config else RunConfig()
    if args.folds:
        return _evaluate_folds(cfg, args)
    if not args.model:
        raise ValueError("cmunext evaluate needs --model (or --folds K to cross-validate)")
    stems = list_pairs(args.data)
    if args.split:
        stems = json.loads(Path(args.split).read_text())[args.split_name]
    predictor = Predictor(args.model, cfg.eval.threshold)
    rows = score_images(predictor.probabilities, args.data, stems, cfg.eval.threshold, progress=not args.quiet)
    with tempfile.TemporaryDirectory() as tmp:
        run, artifact = serving_runner(args.model, tmp)
        lat = latency_ms(run, cfg.eval.latency_runs, cfg.eval.latency_warmup)
    result = {"images": len(rows), "metrics": summarize(rows, cfg.eval.bootstrap), "latency": {**lat, "artifact": artifact},
              "breakdown": breakdown(rows, read_classes(Path(args.data)), cfg.eval.bootstrap)}
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "per_image": rows}, indent=1))
    m = result["metrics"]
    print(f"{len(rows)} images: IoU {m['iou']['value']:.4f} [{m['iou']['ci95_low']:.4f}, {m['iou']['ci95_high']:.4f}], "
          f"Dice {m['dice']['value']:.4f} [{m['dice']['ci95_low']:.4f}, {m['dice']['ci95_high']:.4f}], "
          f"pooled IoU {m['pooled_iou']['value']:.4f}, HD95 {m['hd95']['value']:.1f} px; "
          f"latency p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms ({artifact})")
    for line in _breakdown_lines(result["breakdown"]):
        print(line)
    return 0


# ---- pipeline and registry --------------------------------------------------------------------

def cmd_pipeline_run(args) -> int:
    from pipelines.run import run_pipeline
    summary = run_pipeline(args.config, args.set, caching=not args.no_cache, if_changed=args.if_changed,
                           verbose=args.verbose, runner=args.runner, isolated=args.isolated)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print(format_run_summary(summary))
    return 0


def format_run_summary(s: dict) -> str:
    lines = ["", "=" * 72, f"pipeline run '{s['config']}' finished in {s['seconds']:.0f} s",
             f"  data revision : {s['data_revision']} (digest {s['data_md5'][:12]})"]
    if s.get("retrain_check") == "skip":
        lines += [f"  retrain check : nothing to do; champion {s['champion_after'] or 'none'} stays",
                  f"  MLflow        : {s['mlflow_tracking_uri']}", "=" * 72]
        return "\n".join(lines)
    if s["metrics"]:
        m = s["metrics"]
        lines.append(f"  test IoU      : {m['iou']['value']:.4f} [{m['iou']['ci95_low']:.4f}, {m['iou']['ci95_high']:.4f}] "
                     f"Dice {m['dice']['value']:.4f}  HD95 {m['hd95']['value']:.1f} px")
        lines += _breakdown_lines(s.get("breakdown"))
        if s.get("cross_validation"):
            lines.append(_cv_line(s["cross_validation"]))
        lines.append(f"  latency       : p50 {s['latency']['p50_ms']:.1f} ms, p95 {s['latency']['p95_ms']:.1f} ms "
                     f"({s['latency'].get('artifact', '')})")
    gate = s["gate"] or {}
    if s["promoted"]:
        verdict = "PROMOTED"
    elif gate.get("decision") == "promote":
        verdict = "passed, champion unchanged (this training run is already registered)"
    else:
        verdict = "REJECTED"
    lines.append(f"  gate          : {verdict}; champion {s['champion_before'] or 'none'} -> {s['champion_after'] or 'none'}")
    lines += [f"                  {r}" for r in gate.get("reasons", [])]
    if s.get("infra_validation"):
        lines.append(f"  served check  : {s['infra_validation']['summary']} (the bento booted before promotion)")
    lines += [f"  artifacts     : {s['outputs']}", f"  full log      : {s.get('log', '-')}",
              f"  MLflow        : {s['mlflow_tracking_uri']}",
              f"  MLflow UI     : {s['mlflow_ui']}", "=" * 72]
    return "\n".join(lines)


def _evaluate_folds(cfg, args) -> int:
    """K-fold grouped CV on the images outside the test split of --split, DIR/splits.json, or a split made now."""
    import tempfile

    from .cross_validation import cross_validate
    from .data.duplicates import read_classes
    from .data.split import make_split, read_split_file
    data = Path(args.data)
    classes = read_classes(data)
    frozen = Path(args.split) if args.split else data / "splits.json"
    split = (read_split_file(frozen) if frozen.is_file() else
             make_split(data, cfg.data.split_ratios, cfg.data.split_seed, progress=False, classes=classes))
    with tempfile.TemporaryDirectory() as tmp:
        cv = cross_validate(cfg, data, split, args.folds, Path(tmp), classes)
    if args.json:
        Path(args.json).write_text(json.dumps(cv, indent=1))
    for r in cv["per_fold"]:
        print(f"  fold {r['fold']}: {r['images']} images, IoU {r['iou']:.4f}, Dice {r['dice']:.4f} (best epoch {r['best_epoch']})")
    print(_cv_line(cv))
    return 0


def _cv_line(cv: dict) -> str:
    return (f"  {cv['folds']}-fold CV    : IoU {_ci(cv['iou'])}, Dice {cv['dice']['value']:.4f} "
            f"(mean over folds of {cv['pool_images']} images outside the test split; t-interval)")


def _ci(est: dict) -> str:
    return f"{est['value']:.4f} [{est['ci95_low']:.4f}, {est['ci95_high']:.4f}]"


def _breakdown_lines(b: dict | None) -> list[str]:
    """Lesion and normal images apart, and each class: what the one mean IoU mixes."""
    if not b:
        return []
    lines = []
    if b["normal"]["images"]:  # with only lesion images the mean above is already the lesion figure
        n, d = b["normal"], b["detection"]
        if b["lesion"]["iou"]:
            lines.append(f"    lesion      : {b['lesion']['images']} images, IoU {_ci(b['lesion']['iou'])}, "
                         f"detected {d['sensitivity']['value']:.1%}")
        lines.append(f"    normal      : {n['images']} images, predicted empty {n['predicted_empty']['value']:.1%}, "
                     f"false-positive area {n['false_positive_area']['value']:.2%}")
    for name, c in b["classes"].items():
        lines.append(f"    {name[:11]:<11} : {c['images']} images, IoU {_ci(c['iou'])}, Dice {c['dice']['value']:.4f}")
    return lines


def cmd_pipeline_compile(args) -> int:
    from pipelines.run import compile_pipeline
    cfg = load_config(args.config, args.set) if args.config else None
    print(f"wrote {compile_pipeline(args.out, cfg)}")
    return 0


def cmd_pipeline_submit(args) -> int:
    from pipelines.cluster import submit
    cfg = load_config(args.config, args.set)
    result = submit(cfg, args.host, experiment=args.experiment, run_name=args.run_name, namespace=args.namespace,
                    project_repo=args.project_repo, if_changed=args.if_changed)
    print(f"submitted run {result['run_id']} (experiment {args.experiment}): {result['url']}")
    return 0


def cmd_pipeline_schedule(args) -> int:
    from pipelines.cluster import schedule
    cfg = load_config(args.config, args.set)
    result = schedule(cfg, args.host, args.cron, experiment=args.experiment, name=args.name,
                      namespace=args.namespace, project_repo=args.project_repo)
    print(f"scheduled recurring run {result['recurring_run_id']} on cron '{result['cron']}' (KFP's six fields); "
          f"each run retrains only if the data, the code or the champion's age call for it")
    return 0


def cmd_retrain(args) -> int:
    """Fit for cron: decide here, without starting the pipeline, and only run it when there is work."""
    from pipelines.run import PROJECT_ROOT, run_pipeline

    from .retrain import decide, measure_data, record
    cfg = load_config(args.config, args.set)
    if args.if_changed:
        decision = decide(cfg, measure_data(cfg, PROJECT_ROOT))
        if decision["decision"] == "skip":
            record(cfg, decision, source="cli")
            print(f"retrain: {decision['reasons'][0]}")
            return 0
        print("retrain: " + "; ".join(decision["reasons"]))
    summary = run_pipeline(args.config, args.set, if_changed=args.if_changed)
    print(format_run_summary(summary))
    return 0


def _model_name(args) -> str:
    if args.model_name:
        return args.model_name
    return load_config(args.config, []).registry.model_name if args.config else load_config(None).registry.model_name


def cmd_registry_show(args) -> int:
    from .tracking import registry
    info = registry.show(_model_name(args))
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    champ = info["champion"]
    print(f"model {info['model']}: champion " + (f"version {champ['version']} (run {champ['run_id']}, "
          f"test IoU {champ['tags'].get('test_iou', '?')}, p95 {champ['tags'].get('latency_p95_ms', '?')} ms)"
          if champ else "none"))
    for h in info["history"][-10:]:
        what = f"v{h['version']} (replaced {h['replaced'] or '-'})" if h["version"] else f"run {h.get('run_id', '?')[:12]}"
        print(f"  {h['at']}  {h['event']:<12} {what} by {h.get('user') or '-'}: {h['reason'][:90]}")
    return 0


def cmd_registry_users_apply(args) -> int:
    from .tracking import users
    for line in users.apply(args.file):
        print(line)
    return 0


def _use_bento_store(args) -> None:
    """The config's bento store, where the registry's promotion lease lives (cmunext/tracking/lease.py)."""
    from .serving import store
    store.use(load_config(getattr(args, "config", None), []).registry.bento_store)


def cmd_registry_promote(args) -> int:
    from .tracking import registry
    _use_bento_store(args)
    entry = registry.promote(_model_name(args), str(args.version), reason=f"manual: {args.reason}")
    print(f"version {entry['version']} is now champion (was {entry['replaced'] or 'none'})")
    return 0


def cmd_registry_rollback(args) -> int:
    from .tracking import registry
    _use_bento_store(args)
    entry = registry.rollback(_model_name(args), reason=f"rollback: {args.reason}")
    print(f"rolled back: version {entry['version']} is champion again (was {entry['replaced']})")
    return 0


# ---- serving ----------------------------------------------------------------------------------

def cmd_serve(args) -> int:
    """`champion` (default) and plain version numbers resolve through the MLflow registry to the
    bento the package step built for that version; anything else is a bento or BentoML model tag."""
    from .serving.serve import serve

    target = args.model
    if target == "champion" or target.isdigit():
        _, target = _resolve_version(args)
    from cmunext_serving.guard import api_token
    token = api_token()  # a required but missing token stops here, with the reason
    if args.container:
        return _serve_container(args, target, token)
    print(f"serving {target} on http://{args.host}:{args.port}/; the API "
          + ("requires 'Authorization: Bearer <CMUNEXT_API_TOKEN>'" if token else
             "is open: no token required (set CMUNEXT_API_TOKEN to require one)"), flush=True)
    code = serve(target, host=args.host, port=args.port)
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def _serve_container(args, bento_tag: str, token: str | None) -> int:
    """The version's serving image (`cmunext containerize`), run in the foreground on --port."""
    from .containers.engine import find_engine
    from .containers.images import image_names
    from .containers.serving import serve_container
    from .serving.package import stores

    labels = stores()[1].get(bento_tag).info.labels
    image = image_names().serving(labels["mlflow_model"], labels["mlflow_version"])
    env = {k: os.environ[k] for k in ("CMUNEXT_API_TOKEN", "CMUNEXT_REQUIRE_AUTH") if k in os.environ}
    print(f"serving {image} (bento {bento_tag}) in a container on http://{args.host}:{args.port}/; the API "
          + ("requires a token" if token else "is open"), flush=True)
    return serve_container(find_engine(), image, args.port, args.host, env)


def cmd_containerize(args) -> int:
    from .containers.engine import find_engine
    from .containers.serving import containerize
    from .serving.package import stores

    version, bento_tag = _resolve_version(args)
    labels = stores()[1].get(bento_tag).info.labels
    result = containerize(find_engine(), bento_tag, labels.get("mlflow_model", _model_name(args)),
                          labels.get("mlflow_version", version), base=args.base, verbose=args.verbose)
    print(f"built {result['image']} ({result['size_mb']:,} MB, {result['seconds']:.0f} s) from bento {bento_tag}")
    print(f"run it:  cmunext serve --container --model {version} --port 3000   "
          f"(or: podman run --rm --pull=never --read-only --tmpfs /tmp -p 3000:3000 {result['image']})")
    return 0


def _resolve_version(args) -> tuple[str, str]:
    """(MLflow version, bento tag) for --model champion|VERSION."""
    from .serving.serve import bento_for_version
    from .tracking import registry
    name, version = _model_name(args), args.model
    if version == "champion":
        champ = registry.champion(name)
        if champ is None:
            raise registry.RegistryError(f"{name} has no champion yet: run the pipeline (make demo) first")
        version = str(champ["version"])
    elif not version.isdigit():
        raise registry.RegistryError(f"--model must be champion or a version number of {name}, got {version!r}")
    try:
        return version, bento_for_version(version, name)
    except LookupError as exc:
        raise registry.RegistryError(str(exc)) from None


def cmd_deploy(args) -> int:
    from .containers.deploy import deploy
    from .containers.engine import find_engine

    version, bento_tag = _resolve_version(args)
    result = deploy(find_engine(), bento_tag, _model_name(args), version, Path(args.out), push=args.push,
                    apply=args.apply, k8s=Path(args.k8s))
    print(f"{_model_name(args)} v{version}: image {result['image']}" + (" (built)" if result["built"] else "")
          + (", pushed" if result["pushed"] else "") + f"; manifests {result['manifests']}"
          + ("; applied" if result["applied"] else f" (apply: kubectl apply -f {result['manifests']})"))
    return 0


def cmd_images_build(args) -> int:
    from .containers.build import build_images
    from .containers.engine import find_engine
    extra = dict(kv.split("=", 1) for kv in args.build_arg)
    results = build_images(find_engine(), args.only or None, base=args.base, extra_args=extra, verbose=args.verbose)
    for r in results:
        print(f"{r['image']}  (+ {r['latest'].rsplit(':', 1)[1]})  {r['size_mb']:,} MB  built in {r['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def cmd_images_list(args) -> int:
    from .containers.engine import find_engine
    from .containers.images import IMAGES_CONF, image_names
    engine, names = find_engine(), image_names()
    print(f"from {IMAGES_CONF} (registry {names.registry}, tag {names.tag}); engine {engine.name}")
    for image in (names.components, names.mlflow):
        there = engine.image_exists(image)
        print(f"  {image:<50} " + (f"{engine.image_size(image) / 1e6:,.0f} MB" if there else "not built (make images)"))
    return 0


def cmd_bench(args) -> int:
    if args.what == "inference":
        from .serving import bench_inference
        return bench_inference.main(args.args)
    from .serving import bench
    return bench.main(args.args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmunext", description="CMUNeXt lesion segmentation: data, training, pipeline, serving")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset import, synthesis, validation, splitting, versioning")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("synth", help="write a synthetic ultrasound-like dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--empty-fraction", type=float, default=0.0, help="share of images without a lesion")
    p.set_defaults(func=cmd_data_synth)
    p = dsub.add_parser("split", help="write or update DIR/splits.json: grouped, stratified, frozen once made")
    p.add_argument("dir")
    p.add_argument("--out", help="split file (default DIR/splits.json); an existing one keeps every assignment")
    p.add_argument("--ratios", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=41)
    p.set_defaults(func=cmd_data_split)
    p = dsub.add_parser("import", help="convert BUSI / CMUNeXt / project-layout folders into the project layout")
    p.add_argument("src")
    p.add_argument("--out", required=True)
    p.add_argument("--include-normal", action="store_true", help="keep BUSI 'normal' images (empty masks)")
    p.set_defaults(func=cmd_data_import)
    p = dsub.add_parser("version", help="dvc add + push + commit the pointer; prints the data revision")
    p.add_argument("--data", default="data", help="data folder, relative to the project (default: data)")
    p.add_argument("--project", default=".", help="the git repository's top folder (default: .)")
    p.add_argument("-m", "--message", help="commit message")
    p.add_argument("--json", action="store_true", help="print revision, md5, files, remote as JSON")
    p.set_defaults(func=cmd_data_version)
    p = dsub.add_parser("remote", help="make an S3 bucket (or a local folder) the default DVC remote")
    p.add_argument("url", help="s3://bucket/prefix, or a local folder")
    p.add_argument("--endpoint-url", help="S3-protocol endpoint, e.g. http://127.0.0.1:9000 (MinIO)")
    p.add_argument("--project", default=".")
    p.add_argument("--no-check", action="store_true", help="do not probe the remote before switching")
    p.set_defaults(func=cmd_data_remote)
    p = dsub.add_parser("get", help="the exact dataset of a data revision (or 'workspace') into a folder")
    p.add_argument("revision")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="data")
    p.add_argument("--project", default=".")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_data_get)
    p = dsub.add_parser("validate", help="great-expectations checks; exit 1 naming the files at fault")
    p.add_argument("dir")
    p.add_argument("--report", required=True, help="folder for Data Docs HTML, summary.json, samples.csv")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_validate)

    p = sub.add_parser("train", help="train a model outside the pipeline (same engine)")
    _add_config_args(p, required=True)
    p.add_argument("--out", required=True, help="output folder: checkpoints/, model.safetensors, metrics.json")
    p.add_argument("--data", help="a preprocessed artifact folder (default: prepare the config's data.source)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="masks and overlays for images")
    p.add_argument("images", nargs="+")
    p.add_argument("--model", required=True, help="model.safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float, default=0.5)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="metrics and latency of a model on a dataset, or K-fold cross-validation")
    p.add_argument("--model", help="model.safetensors")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="train and score K models on grouped folds of the images outside the test split (--config's recipe)")
    p.add_argument("--data", required=True, help="dataset folder in the project layout")
    p.add_argument("--split", help="splits.json to take the stems from")
    p.add_argument("--split-name", default="test")
    p.add_argument("--json", help="write the full result (with per-image rows) here")
    _add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    pipe = sub.add_parser("pipeline", help="the Kubeflow pipeline: run locally, compile")
    psub = pipe.add_subparsers(dest="pipeline_command", required=True)
    p = psub.add_parser("run", help="run the whole pipeline on this machine (kfp.local, caching on)")
    _add_config_args(p, required=True)
    p.add_argument("--no-cache", action="store_true", help="run every step even if a cached result exists")
    p.add_argument("--if-changed", action="store_true", help="train only if the data, code or champion's age call for it")
    p.add_argument("--json", help="also write the run summary here")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="stream kfp.local's full output (every step's inputs, outputs and log), not one line per step")
    p.add_argument("--runner", choices=["subprocess", "container"], default=os.environ.get("CMUNEXT_RUNNER", "subprocess"),
                   help="where each step runs: this environment, or the component image (`make images`) through "
                        "podman or docker ($CMUNEXT_RUNNER)")
    p.add_argument("--isolated", action="store_true",
                   help="with --runner container: each step keeps its state in its own container, as pods do; the "
                        "steps share only kfp's artifacts, MLflow and the bento store ($CMUNEXT_BENTO_STORE)")
    p.set_defaults(func=cmd_pipeline_run)
    p = psub.add_parser("compile", help="compile the pipeline YAML for a Kubeflow Pipelines cluster")
    p.add_argument("--out", required=True)
    _add_config_args(p)
    p.set_defaults(func=cmd_pipeline_compile)
    for name, func, help_ in (("submit", cmd_pipeline_submit, "run the pipeline once on a Kubeflow Pipelines cluster"),
                              ("schedule", cmd_pipeline_schedule, "a recurring run that retrains when something changed")):
        p = psub.add_parser(name, help=help_)
        p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080 ($KFP_TOKEN for auth)")
        _add_config_args(p, required=True)
        p.add_argument("--experiment", default="cmunext")
        p.add_argument("--namespace", help="KFP namespace (multi-user installs)")
        p.add_argument("--project-repo", help="git URL the cluster clones to read data.dvc (default: origin)")
        if name == "submit":
            p.add_argument("--run-name")
            p.add_argument("--if-changed", action="store_true")
        else:
            p.add_argument("--cron", required=True, help="five-field cron, e.g. '0 3 * * 0' (Sundays 03:00)")
            p.add_argument("--name", help="recurring run name (default: <config name>-retrain)")
        p.set_defaults(func=func)

    p = sub.add_parser("retrain", help="run the pipeline; with --if-changed only when something changed (cron)")
    _add_config_args(p, required=True)
    p.add_argument("--if-changed", action="store_true",
                   help="skip (exit 0, recorded in MLflow) unless data, code or the champion's age call for training")
    p.set_defaults(func=cmd_retrain)

    reg = sub.add_parser("registry", help="the MLflow model registry: champion, history, promotion, rollback")
    rsub = reg.add_subparsers(dest="registry_command", required=True)
    for name, func, help_ in (("show", cmd_registry_show, "the champion and its history"),
                              ("promote", cmd_registry_promote, "make a version the champion (reviewer's decision)"),
                              ("rollback", cmd_registry_rollback, "move the champion back to the previous version")):
        p = rsub.add_parser(name, help=help_)
        p.add_argument("--model-name", help="registered model (default: from --config or the default config)")
        p.add_argument("--config", "-c")
        if name == "show":
            p.add_argument("--json", action="store_true")
        if name == "promote":
            p.add_argument("version")
        if name in ("promote", "rollback"):
            p.add_argument("--reason", required=name == "promote", default="manual rollback")
        p.set_defaults(func=func)
    users = rsub.add_parser("users", help="MLflow users and their permissions (a server with authentication)")
    usub = users.add_subparsers(dest="users_command", required=True)
    p = usub.add_parser("apply", help="create the users of FILE and grant their roles (idempotent; as an MLflow admin)")
    p.add_argument("file", help="YAML: experiment, model, users (name, role, password_env); see infra/mlflow/users.yaml")
    p.set_defaults(func=cmd_registry_users_apply)

    p = sub.add_parser("serve", help="serve the champion's bento (or a chosen version) with BentoML")
    p.add_argument("--model", default="champion", help="champion, an MLflow version number, or a bento/model tag")
    p.add_argument("--model-name", help="registered model (default: from --config or the default config)")
    p.add_argument("--config", "-c")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--container", action="store_true",
                   help="run the version's serving image (`cmunext containerize`) instead of a local bentoml serve")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("containerize", help="build the serving image of the champion (or a version): no torch, non-root")
    p.add_argument("--model", default="champion", help="champion or an MLflow version number")
    p.add_argument("--model-name", help="registered model (default: from --config or the default config)")
    p.add_argument("--config", "-c")
    p.add_argument("--base", help="base image (default: the pinned public one, else the Debian-built one)")
    p.add_argument("--verbose", "-v", action="store_true", help="show the whole build output")
    p.set_defaults(func=cmd_containerize)

    p = sub.add_parser("deploy", help="make the Kubernetes Deployment serve the champion (after a promotion or rollback)")
    p.add_argument("--model", default="champion", help="champion or an MLflow version number")
    p.add_argument("--model-name", help="registered model (default: from --config or the default config)")
    p.add_argument("--config", "-c")
    p.add_argument("--out", default="build/deploy/cmunext.yaml", help="where the rendered manifests go")
    p.add_argument("--k8s", default=str(Path(__file__).resolve().parents[1] / "infra" / "k8s"),
                   help="the kustomize tree (its secrets' .env files made: docs/deploy.md)")
    p.add_argument("--push", action="store_true", help="push the serving image to images.conf's registry")
    p.add_argument("--apply", action="store_true", help="kubectl apply the rendered manifests")
    p.set_defaults(func=cmd_deploy)

    img = sub.add_parser("images", help="the project's container images (names from images.conf)")
    isub = img.add_subparsers(dest="images_command", required=True)
    p = isub.add_parser("build", help="build the component and MLflow images (make images)")
    p.add_argument("--only", action="append", choices=["components", "mlflow"], help="build only this image")
    p.add_argument("--base", help="base image (default: the pinned public one, else the Debian-built one)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V",
                   help="e.g. TORCH_LOCAL= TORCH_INDEX=https://pypi.org/simple for CUDA torch")
    p.add_argument("--json", help="write tags, sizes and build times here")
    p.add_argument("--verbose", "-v", action="store_true", help="show the whole build output")
    p.set_defaults(func=cmd_images_build)
    p = isub.add_parser("list", help="the image names and whether they are built")
    p.set_defaults(func=cmd_images_list)

    p = sub.add_parser("bench", help="benchmarks, as ratios against a baseline run in the same process")
    p.add_argument("what", choices=["inference", "serving"])
    p.add_argument("args", nargs=argparse.REMAINDER, help="options of the benchmark (see --help after the name)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # -q/--quiet is accepted anywhere on the line, not only before the subcommand
    quiet = any(a in ("-q", "--quiet") for a in argv)
    args = build_parser().parse_args([a for a in argv if a not in ("-q", "--quiet")])
    args.quiet = quiet
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (CmunextError, FileNotFoundError, ValueError, TokenMissing) as exc:
        print(f"cmunext: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmunext: interrupted", file=sys.stderr)
        return 130
