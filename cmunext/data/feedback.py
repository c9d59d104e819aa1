"""Corrections that came back from the served model (`POST /feedback`, cmunext_serving/feedback.py) into a dataset:
each corrected pair becomes a new stem `feedback-<request id>` in DIR's project layout, checked first by the same
named great-expectations checks as any import (a failing check adds nothing and names the files). Nothing is
overwritten: a stem already there was imported before and is counted as such. DIR's splits.json is not touched:
the split step places new stems by its own rule (a new near-duplicate of a test image joins the test split; the
rest keep the ratios), so a correction never moves an existing test assignment."""
from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from cmunext_serving.feedback import get, listing
from cmunext_serving.imageio import DataError, write_png

STEM_PREFIX = "feedback-"


def import_feedback(root: str, model: str, out: str | Path, since: datetime | None = None,
                    checks: dict | None = None) -> dict:
    """Import the feedback for MODEL stored under ROOT into OUT; returns {imported, already, skipped, stems}."""
    out, prefix = Path(out), f"{root.rstrip('/')}/{model}"
    labels = [json.loads(get(uri)) for uri in listing(f"{prefix}/labels", ".json")]
    labels = [lab for lab in labels if since is None or datetime.fromisoformat(lab["time"]) >= since]
    fresh = [lab for lab in labels if not (out / "images" / f"{STEM_PREFIX}{lab['request_id']}.png").exists()]
    skipped, stems = [], []
    with tempfile.TemporaryDirectory(prefix="cmunext-feedback-") as tmp:
        staged = Path(tmp) / "pairs"
        for label in fresh:
            reason = _stage(prefix, label, staged)
            if reason:
                skipped.append({"request_id": label["request_id"], "reason": reason})
            else:
                stems.append(STEM_PREFIX + label["request_id"])
        if stems:
            _validate(staged, Path(tmp) / "report", checks or {})
            for sub in ("images", "masks"):
                (out / sub).mkdir(parents=True, exist_ok=True)
                for stem in stems:
                    shutil.copyfile(staged / sub / f"{stem}.png", out / sub / f"{stem}.png")
    return {"imported": len(stems), "already": len(labels) - len(fresh), "skipped": skipped, "stems": stems,
            "source": prefix}


def _stage(prefix: str, label: dict, staged: Path) -> str | None:
    """Write the pair of LABEL into STAGED (PNG, project layout); the reason when it cannot."""
    from cmunext_serving.imageio import read_image

    rid = label["request_id"]
    image = get(f"{prefix}/images/{label['image']}") if label.get("image") else None
    mask = get(f"{prefix}/masks/{rid}.png")
    if image is None or mask is None:
        return f"its {'image (capture expired or never stored)' if image is None else 'mask'} is missing"
    for name, data, sub in ((label["image"], image, "images"), (f"{rid}.png", mask, "masks")):
        source = staged / "raw" / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(data)
        try:
            array = read_image(source)
        except DataError as exc:
            return str(exc)
        write_png(staged / sub / f"{STEM_PREFIX}{rid}.png", (array > 0).astype("uint8") * 255 if sub == "masks" else array)
    return None


def _validate(staged: Path, report: Path, checks: dict) -> None:
    """The import's named checks on the new pairs alone; DataError naming the failures and their files."""
    from .validate import format_summary, validate_dataset

    shutil.rmtree(staged / "raw", ignore_errors=True)
    summary = validate_dataset(staged, report, min_samples=1, progress=False, **checks)
    if not summary["success"]:
        raise DataError("feedback not imported: the corrected pairs fail the dataset checks\n" + format_summary(summary))
