"""Pictures people would rather look at: training curves and best/worst mask galleries."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cmunext_serving.imageio import read_image, read_mask  # noqa: E402
from cmunext_serving.lesion_rule import LesionRule  # noqa: E402

from .data.layout import find_file  # noqa: E402
from .predict import overlay  # noqa: E402


def training_curves(history: list[dict], out: str | Path, loss: str = "loss") -> Path:
    """Train/validation loss (LOSS names it on the axis) and validation IoU per epoch, the best epoch marked."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set(xlabel="epoch", ylabel=loss, title="Loss")
    ax1.legend()
    ax2.plot(epochs, [h["val_iou"] for h in history], color="tab:green")
    best = max(history, key=lambda h: h["val_iou"])
    ax2.scatter([best["epoch"]], [best["val_iou"]], color="tab:red", zorder=3, label=f"best (epoch {best['epoch']})")
    ax2.set(xlabel="epoch", ylabel="mean IoU", title="Validation IoU", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def gallery(rows: list[dict], probabilities, root: str | Path, out: str | Path, n: int = 4,
            rule: LesionRule = LesionRule()) -> Path:
    """Best and worst `n` test images by IoU: ground truth in green, prediction (by RULE, as scored) in red."""
    root = Path(root)
    ranked = sorted(rows, key=lambda r: r["iou"])
    picks = [("worst", r) for r in ranked[:n]] + [("best", r) for r in ranked[::-1][:n]]
    fig, axes = plt.subplots(2, max(n, 1), figsize=(3.2 * max(n, 1), 6.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (label, r) in enumerate(picks):
        image = read_image(find_file(root / "images", r["stem"]))
        gt = read_mask(find_file(root / "masks", r["stem"]))
        pred = rule.mask(probabilities(image))
        shown = overlay(overlay(image, gt, color=(40, 220, 40)), pred, color=(255, 40, 40))
        ax = axes[0 if label == "worst" else 1][k % n]
        ax.imshow(shown)
        ax.set_title(f"{label}: {r['stem']}\nIoU {r['iou']:.3f}", fontsize=8)
    fig.suptitle("Test images, worst (top) and best (bottom): ground truth green, prediction red", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


