"""`cmunext data`: import, synthesise, validate, split and version datasets."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .common import EXIT_INVALID, EXIT_OK, add_config_args, config, since_time

log = logging.getLogger("cmunext")


def synth(args) -> int:
    from ..data.synth import write_synthetic_dataset
    out = write_synthetic_dataset(args.out, args.n, args.seed, args.empty_fraction, progress=not args.quiet)
    print(f"wrote {args.n} synthetic image/mask pairs to {out}")
    return EXIT_OK


def import_(args) -> int:
    from ..data.importers import import_dataset
    s = import_dataset(args.src, args.out, include_normal=args.include_normal, progress=not args.quiet)
    classes = ", ".join(f"{k} {v}" for k, v in s["classes"].items())
    state = "already up to date" if s["unchanged"] else "wrote"
    print(f"{s['out']}: {state} {s['pairs']} image/mask pairs from a {s['layout']} layout ({classes}); "
          f"{s['converted']} converted to PNG, {s['merged_masks']} with merged masks, {len(s['skipped'])} skipped")
    for item in s["skipped"][:20]:
        print(f"  skipped {item['file']}: {item['reason']}")
    if len(s["skipped"]) > 20:
        print(f"  ... and {len(s['skipped']) - 20} more")
    return EXIT_OK


def version(args) -> int:
    from ..data.versioning import version_data
    r = version_data(args.project, args.data, args.message)
    if args.json:
        print(json.dumps(r, indent=1))
        return EXIT_OK
    print(r["revision"])
    log.info("%s/: md5 %s, %d files, pushed to remote %r%s", args.data, r["md5"], r["files"], r["remote"],
             "" if r["committed"] else " (unchanged: no new commit)")
    return EXIT_OK


def remote(args) -> int:
    from ..data.versioning import set_remote
    r = set_remote(args.project, args.url, args.endpoint_url, check=not args.no_check)
    print(f"default DVC remote {r['remote']!r}: {r['url']}" + (f" at {r['endpoint_url']}" if r["endpoint_url"] else "")
          + (f" (committed {r['revision'][:12]})" if r["revision"] else " (unchanged)"))
    return EXIT_OK


def get(args) -> int:
    from ..data.versioning import materialize
    print(json.dumps(materialize(args.project, args.revision, args.out, args.data, overwrite=args.overwrite), indent=1))
    return EXIT_OK


def validate(args) -> int:
    from ..data.validate import format_summary, validate_dataset
    d = config(args).data
    # the folder is only read: the duplicates policy says what a run would leave out or merge
    summary = validate_dataset(args.dir, args.report, min_samples=d.min_samples, min_side=d.min_side,
                               max_side=d.max_side, allow_empty_masks=d.allow_empty_masks,
                               max_foreground=d.max_foreground, duplicates=d.duplicates, severity=d.severity,
                               progress=not args.quiet)
    print(format_summary(summary))
    return EXIT_OK if summary["success"] else EXIT_INVALID


def split(args) -> int:
    from ..data.duplicates import read_classes
    from ..data.split import make_split, read_split_file, write_split
    out = Path(args.out) if args.out else Path(args.dir) / "splits.json"
    existing = read_split_file(out) if out.is_file() else None
    made = make_split(args.dir, tuple(args.ratios), args.seed, existing=existing, classes=read_classes(Path(args.dir)))
    write_split(made, out)
    info = made["info"]
    print(f"{out}: train {len(made['train'])}, val {len(made['val'])}, test {len(made['test'])}; "
          f"{info['kept']} kept where they were, {info['assigned']} assigned now"
          + (f", {len(info['gone'])} no longer in the data" if info["gone"] else "")
          + (", stratified by class (mapping.csv)" if info["stratified"] else "")
          + f" ({info['groups']} groups, {info['near_duplicate_groups']} near-duplicate groups "
          f"holding {info['images_in_near_duplicate_groups']} images)")
    return EXIT_OK


def feedback_import(args) -> int:
    from cmunext_serving.feedback import feedback_root

    from ..data.feedback import import_feedback
    from ..data.versioning import dataset_md5, version_data
    from ..monitoring.records import sink
    cfg = config(args)
    d = cfg.data
    root = args.source or feedback_root(sink(cfg.monitoring.prediction_log))
    checks = {"min_side": d.min_side, "max_side": d.max_side, "allow_empty_masks": d.allow_empty_masks,
              "max_foreground": d.max_foreground, "severity": d.severity}
    model = args.model_name or cfg.registry.model_name
    before = dataset_md5(args.dir)["md5"] if Path(args.dir).is_dir() else ""
    r = import_feedback(root, model, args.dir, args.since, checks)
    print(f"{args.dir}: {r['imported']} corrected pairs imported from {r['source']} ({r['already']} imported "
          f"before, {len(r['skipped'])} skipped)")
    for item in r["skipped"]:
        print(f"  skipped {item['request_id']}: {item['reason']}")
    if not r["imported"]:
        return EXIT_OK
    revision = None
    if not args.no_version:
        folder = Path(args.dir).resolve().relative_to(Path(args.project).resolve())
        revision = version_data(args.project, str(folder),
                                f"data: {r['imported']} corrected pairs from serving feedback")["revision"]
        print(f"versioned: data revision {revision}")
    _record_feedback(model, before, dataset_md5(args.dir)["md5"], r["stems"], revision)
    return EXIT_OK


def _record_feedback(model: str, before: str, after: str, stems: list[str], revision: str | None) -> None:
    """The import in MLflow (`<model>-monitoring`): `retrain --if-changed` counts corrections from these records.
    Without it, the next check sees a data change and trains: safe, so a refusing server is a warning."""
    from ..monitoring.history import log_feedback_import
    try:
        log_feedback_import(model, before, after, stems, revision)
    except Exception as exc:  # noqa: BLE001 - MLflow's many errors: the data is imported either way
        print(f"warning: the import is not recorded in MLflow ({type(exc).__name__}: {exc}); the next "
              "`retrain --if-changed` sees it as a data change and trains")


def register(sub) -> None:
    data = sub.add_parser("data", help="dataset import, synthesis, validation, splitting, versioning")
    dsub = data.add_subparsers(dest="data_command", required=True)
    _synth_args(dsub.add_parser("synth", help="write a synthetic ultrasound-like dataset"))
    _split_args(dsub.add_parser("split", help="write or update DIR/splits.json: grouped, stratified, frozen once made"))
    p = dsub.add_parser("import", help="convert BUSI / CMUNeXt / project-layout folders into the project layout")
    p.add_argument("src")
    p.add_argument("--out", required=True)
    p.add_argument("--include-normal", action="store_true", help="keep BUSI 'normal' images (empty masks)")
    p.set_defaults(func=import_)
    _versioning_args(dsub)
    p = dsub.add_parser("validate", help="great-expectations checks; exit 1 naming the files at fault")
    p.add_argument("dir")
    p.add_argument("--report", required=True, help="folder for Data Docs HTML, summary.json, samples.csv")
    add_config_args(p)
    p.set_defaults(func=validate)
    _feedback_args(dsub.add_parser("feedback", help="corrections sent to the served model (POST /feedback)"))


def _feedback_args(p) -> None:
    fsub = p.add_subparsers(dest="feedback_command", required=True)
    p = fsub.add_parser("import", help="add the corrected pairs to DIR as new stems (checked, never overwriting), "
                                       "then version the data")
    p.add_argument("dir", help="the dataset folder (project layout), inside the project when it is versioned")
    p.add_argument("--since", type=since_time, help="feedback since an ISO time or an age (24h, 7d)")
    p.add_argument("--source", help="the feedback store (default: beside the prediction log: .../feedback)")
    p.add_argument("--model-name", help="registered model whose feedback (default: registry.model_name)")
    p.add_argument("--project", default=".", help="the git repository holding DIR (for `data version`)")
    p.add_argument("--no-version", action="store_true", help="import only; version later with `cmunext data version`")
    add_config_args(p)
    p.set_defaults(func=feedback_import)


def _synth_args(p) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--empty-fraction", type=float, default=0.0, help="share of images without a lesion")
    p.set_defaults(func=synth)


def _split_args(p) -> None:
    p.add_argument("dir")
    p.add_argument("--out", help="split file (default DIR/splits.json); an existing one keeps every assignment")
    p.add_argument("--ratios", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=41)
    p.set_defaults(func=split)


def _versioning_args(dsub) -> None:
    """version, remote and get: the DVC side of `cmunext data`."""
    p = dsub.add_parser("version", help="dvc add + push + commit the pointer; prints the data revision")
    p.add_argument("--data", default="data", help="data folder, relative to the project (default: data)")
    p.add_argument("--project", default=".", help="the git repository's top folder (default: .)")
    p.add_argument("-m", "--message", help="commit message")
    p.add_argument("--json", action="store_true", help="print revision, md5, files, remote as JSON")
    p.set_defaults(func=version)
    p = dsub.add_parser("remote", help="make an S3 bucket (or a local folder) the default DVC remote")
    p.add_argument("url", help="s3://bucket/prefix, or a local folder")
    p.add_argument("--endpoint-url", help="S3-protocol endpoint, e.g. http://127.0.0.1:9000 (MinIO)")
    p.add_argument("--project", default=".")
    p.add_argument("--no-check", action="store_true", help="do not probe the remote before switching")
    p.set_defaults(func=remote)
    p = dsub.add_parser("get", help="the exact dataset of a data revision (or 'workspace') into a folder")
    p.add_argument("revision")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="data")
    p.add_argument("--project", default=".")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=get)
