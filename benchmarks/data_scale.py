"""Validate + preprocess wall time and peak memory as the dataset grows.

Each measurement runs in a fresh child process; peak memory is the child's max RSS
(getrusage of the child itself). Time should grow linearly with the number of images and memory stay flat.

    python benchmarks/data_scale.py --sizes 500 5000 --work /tmp/scale [--dataset DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from cmunext.data.validate import validate_dataset
from cmunext.data.split import make_split
from cmunext.data.preprocess import preprocess
root, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
summary = validate_dataset(root, out + "/report", min_samples=1, progress=False)
t1 = time.perf_counter()
split = make_split(root, progress=False)
preprocess(root, split, out + "/shards", size, progress=False)
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process's own peak, MiB
print(json.dumps({"validate_s": t1 - t0, "split_preprocess_s": t2 - t1, "valid": summary["success"],
                  "peak_rss_mib": peak}))
"""


def measure(root: Path, out: Path, size: int) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), str(out), str(size)],
                          capture_output=True, text=True, check=True)
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[500, 5000])
    ap.add_argument("--dataset", action="append", default=[], help="also measure this dataset folder")
    ap.add_argument("--work", default="/tmp/cmunext-scale")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    work = Path(args.work)
    rows = []
    targets = [(Path(d).name, Path(d)) for d in args.dataset]
    for n in sorted(args.sizes):
        folder = work / f"synth{n}"
        if not (folder / "masks").is_dir() or len(list((folder / "masks").iterdir())) != n:
            subprocess.run([sys.executable, "-m", "cmunext", "-q", "data", "synth", "--out", str(folder),
                            "--n", str(n), "--seed", "1"], check=True)
        targets.append((f"synthetic {n}", folder))
    for name, folder in targets:
        r = measure(folder, work / f"out-{folder.name}", args.image_size)
        n_images = len(list((folder / "masks").iterdir()))
        r["ms_per_image"] = round(1000 * (r["validate_s"] + r["split_preprocess_s"]) / n_images, 2)
        rows.append({"dataset": name, "images": n_images, **r})
        print(f"{name:>16}: validate {r['validate_s']:.1f} s, split+preprocess {r['split_preprocess_s']:.1f} s, "
              f"({r['ms_per_image']:.1f} ms/image), process wall {r['wall_s']:.1f} s, peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB", flush=True)
    (work / "data_scale.json").write_text(json.dumps(rows, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
