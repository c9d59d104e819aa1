"""Text for people: the pipeline run's summary, and the breakdown and CV lines `evaluate` prints too."""
from __future__ import annotations

RULE = "=" * 72


def ci(est: dict) -> str:
    return f"{est['value']:.4f} [{est['ci95_low']:.4f}, {est['ci95_high']:.4f}]"


def breakdown_lines(b: dict | None) -> list[str]:
    """Lesion and normal images apart, and each class: what the one mean IoU mixes."""
    if not b:
        return []
    lines = []
    if b["normal"]["images"]:  # with only lesion images the mean above is already the lesion figure
        n, d = b["normal"], b["detection"]
        if b["lesion"]["iou"]:
            lines.append(f"    lesion      : {b['lesion']['images']} images, IoU {ci(b['lesion']['iou'])}, "
                         f"detected {d['sensitivity']['value']:.1%}")
        lines.append(f"    normal      : {n['images']} images, predicted empty {n['predicted_empty']['value']:.1%}, "
                     f"false-positive area {n['false_positive_area']['value']:.2%}")
    for name, c in b["classes"].items():
        lines.append(f"    {name[:11]:<11} : {c['images']} images, IoU {ci(c['iou'])}, Dice {c['dice']['value']:.4f}")
    return lines


def cv_line(cv: dict) -> str:
    return (f"  {cv['folds']}-fold CV    : IoU {ci(cv['iou'])}, Dice {cv['dice']['value']:.4f} "
            f"(mean over folds of {cv['pool_images']} images outside the test split; t-interval)")


def _share(est: dict | None) -> str:
    return f"{est['value']:.1%}" if est else "-"


def lesion_rule_lines(choice: dict) -> list[str]:
    """The lesion-free rule the masks were made with (cmunext/no_lesion.py), why, and what it changed on test."""
    from cmunext_serving.lesion_rule import LesionRule

    rule = choice["rule"]
    cut = _largest_region_lines(choice)
    if not LesionRule.from_dict(rule).active:
        return [f"  lesion rule   : off, threshold {rule['threshold']:g} only ({choice.get('reason', '')})", *cut]
    val = choice["with"]  # an active rule had both kinds of validation image to choose on
    lines = [f"  lesion rule   : empty unless peak >= {rule['min_peak']:g} and largest region >= "
             f"{rule['min_area']:.2%} of the image (validation: normals empty {val['specificity']:.0%}, "
             f"lesions found {val['sensitivity']:.0%})"]
    if test := choice.get("test"):
        d = test["breakdown_without"]["detection"]
        lines.append(f"                  without it on test: normals empty {_share(d['specificity'])}, lesions "
                     f"found {_share(d['sensitivity'])}; {test['emptied']} masks emptied by it")
    return lines + cut


def _largest_region_lines(choice: dict) -> list[str]:
    """Whether lesion masks are cut to their largest region (chosen on validation), and its effect on test."""
    c = choice.get("largest_region")
    if not c:
        return []
    line = (f"  largest region: {'masks cut to it' if c['kept'] else 'masks kept whole'} (validation IoU "
            f"{c['val_iou_largest_only']:.4f} cut, {c['val_iou_whole']:.4f} whole)")
    if c["kept"] and (d := (choice.get("test") or {}).get("lesion_iou_diff")):
        line += f"; on test, lesion IoU {d['value']:+.4f} [{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}] (paired)"
    return [line]


def metric_lines(s: dict) -> list[str]:
    m = s["metrics"]
    lines = [f"  test IoU      : {ci(m['iou'])} Dice {m['dice']['value']:.4f}  HD95 {m['hd95']['value']:.1f} px"]
    lines += breakdown_lines(s.get("breakdown"))
    if s.get("cross_validation"):
        lines.append(cv_line(s["cross_validation"]))
    if s.get("lesion_rule"):
        lines += lesion_rule_lines(s["lesion_rule"])
    lines.append(f"  latency       : p50 {s['latency']['p50_ms']:.1f} ms, p95 {s['latency']['p95_ms']:.1f} ms "
                 f"({s['latency'].get('artifact', '')})")
    return lines


def decision_lines(s: dict) -> list[str]:
    """The run's outcome (pipelines/summary.py) and the reasons behind it."""
    gate = s["gate"] or {}
    lines = [f"  decision      : {s['outcome']['line']}; champion {s['champion_before'] or 'none'} -> "
             f"{s['champion_after'] or 'none'}"]
    lines += [f"                  {r}" for r in s["outcome"].get("reasons") or gate.get("reasons", [])]
    if s.get("infra_validation") and s["infra_validation"].get("passed"):
        lines.append(f"  served check  : {s['infra_validation']['summary']} (the bento booted before promotion)")
    return lines


def run_summary(s: dict) -> str:
    lines = ["", RULE, f"pipeline run '{s['config']}' finished in {s['seconds']:.0f} s",
             f"  data revision : {s['data_revision']} (digest {s['data_md5'][:12]})"]
    if s.get("retrain_check") == "skip":
        return "\n".join(lines + [f"  retrain check : nothing to do; champion {s['champion_after'] or 'none'} stays",
                                  f"  MLflow        : {s['mlflow_tracking_uri']}", RULE])
    if s["metrics"]:
        lines += metric_lines(s)
    lines += decision_lines(s)
    lines += [f"  artifacts     : {s['outputs']}", f"  full log      : {s.get('log', '-')}",
              f"  MLflow        : {s['mlflow_tracking_uri']}", f"  MLflow UI     : {s['mlflow_ui']}", RULE]
    return "\n".join(lines)
