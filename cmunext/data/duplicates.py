"""What to do with byte-identical images (`data.duplicates`), decided from the validation scan.

Public sets hold them for two reasons: one image annotated once per lesion (a thyroid set's
`294_1_n1`, `294_1_n2`), or the same image filed twice with contradicting labels (BUSI's
`benign_0433` and `malignant_0145`). Copies whose masks and classes agree are plain copies: every
policy but `fail` keeps one of them (nothing is lost). Copies that disagree follow the policy:

- `quarantine` (default): all copies leave training and evaluation, moved to `quarantine/` in the
  run's dataset snapshot and listed in the report and in MLflow. Nothing is guessed: which
  annotation is right is for a person to decide.
- `merge`: the copies are one image annotated several times: their masks are united on the first
  stem (as the BUSI importer does for `_mask_N` files), the rest leave.
- `keep-one`: the first stem (sorted) stays as it is, the rest leave.
- `fail`: validation fails, naming the groups and the fix.

Only a run's snapshot is ever changed; the source folder and its data revision stay as they are.
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Policy = Literal["quarantine", "merge", "keep-one", "fail"]
POLICIES: tuple[str, ...] = ("quarantine", "merge", "keep-one", "fail")
QUARANTINE = "quarantine"
FIX = "set data.duplicates to quarantine, merge or keep-one (README, \"Real data\")"


@dataclass
class Group:
    stems: list[str]
    masks_agree: bool
    classes: dict[str, str]
    action: str = ""  # "kept X" / "merged into X" / "quarantined" / "unresolved"
    kept: str | None = None
    removed: list[str] = field(default_factory=list)

    @property
    def conflict(self) -> bool:
        return not self.masks_agree or len(set(self.classes.values())) > 1


@dataclass
class Plan:
    policy: str
    groups: list[Group]

    @property
    def removed(self) -> list[str]:
        return sorted(s for g in self.groups for s in g.removed)

    @property
    def merged(self) -> dict[str, list[str]]:
        return {g.kept: [s for s in g.stems if s != g.kept] for g in self.groups if g.action.startswith("merged")}

    @property
    def quarantined(self) -> list[str]:
        return sorted(s for g in self.groups if g.action == "quarantined" for s in g.stems)

    @property
    def unresolved(self) -> list[Group]:
        return [g for g in self.groups if g.action == "unresolved"]

    def to_dict(self) -> dict:
        return {"policy": self.policy, "groups": [asdict(g) | {"conflict": g.conflict} for g in self.groups],
                "removed": self.removed, "merged": self.merged, "quarantined": self.quarantined}

    def describe(self) -> str:
        if not self.groups:
            return "no byte-identical images"
        conflicts = sum(g.conflict for g in self.groups)
        text = (f"{len(self.groups)} groups of byte-identical images ({conflicts} with differing masks or classes), "
                f"policy {self.policy}: ")
        parts = []
        if self.merged:
            parts.append(f"{len(self.merged)} merged (" + ", ".join(f"{k} <- {'+'.join(v)}" for k, v in self.merged.items()) + ")")
        if self.quarantined:
            parts.append(f"{len(self.quarantined)} images quarantined ({', '.join(self.quarantined)})")
        copies = [g for g in self.groups if g.action.startswith("kept")]
        if copies:
            parts.append(f"{len(copies)} kept one copy (" + ", ".join(f"{g.kept} over {'+'.join(g.removed)}" for g in copies) + ")")
        if self.unresolved:
            parts.append(f"{len(self.unresolved)} left as they are: {FIX}")
        return text + "; ".join(parts)


def read_classes(root: Path) -> dict[str, str]:
    """stem -> class from ROOT/mapping.csv (what `cmunext data import` writes), if there is one."""
    path = Path(root) / "mapping.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["stem"]: row.get("class") or "" for row in csv.DictReader(f) if row.get("stem")}


def _mask(root: Path, mask_file: str) -> np.ndarray:
    from cmunext_serving.imageio import read_image
    return read_image(root / mask_file, channels=1) > 0


def plan(root: Path, groups: list[list[str]], mask_files: dict[str, str], policy: str,
         classes: dict[str, str] | None = None) -> Plan:
    """Decide, per group of byte-identical images (stems sorted), what POLICY does with it."""
    if policy not in POLICIES:
        raise ValueError(f"data.duplicates must be one of {', '.join(POLICIES)}, got {policy!r}")
    classes = classes if classes is not None else read_classes(root)
    out = []
    for stems in groups:
        masks = [_mask(root, mask_files[s]) for s in stems]
        agree = all(m.shape == masks[0].shape and np.array_equal(m, masks[0]) for m in masks[1:])
        g = Group(stems=list(stems), masks_agree=agree, classes={s: classes.get(s, "") for s in stems})
        first, rest = stems[0], list(stems[1:])
        if policy == "fail":
            g.action = "unresolved"
        elif not g.conflict or policy == "keep-one":
            g.action, g.kept, g.removed = f"kept {first}", first, rest
        elif policy == "merge":
            g.action, g.kept, g.removed = f"merged into {first}", first, rest
        else:
            g.action, g.removed = "quarantined", list(stems)
        out.append(g)
    return Plan(policy, out)


def apply(root: Path, the_plan: Plan, image_files: dict[str, str], mask_files: dict[str, str]) -> None:
    """Carry out the plan on ROOT (a run's snapshot): write united masks, move removed pairs to quarantine/."""
    from PIL import Image

    root = Path(root)
    for kept, others in the_plan.merged.items():
        union = np.logical_or.reduce([_mask(root, mask_files[s]) for s in [kept, *others]])
        target = root / mask_files[kept]
        Image.fromarray((union * 255).astype(np.uint8)).save(target.with_suffix(".png"))
        if target.suffix.lower() != ".png":
            target.unlink()
    for stem in the_plan.removed:
        for rel in (image_files.get(stem), mask_files.get(stem)):
            if rel:
                dest = root / QUARANTINE / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(root / rel), dest)
