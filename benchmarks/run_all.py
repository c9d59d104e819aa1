"""Run every benchmark at a size that fits a few minutes on 2 CPU cores (`make bench`)."""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
RUNS = [
    [sys.executable, str(HERE / "training_throughput.py"), "--steps", "3"],
    [sys.executable, str(HERE / "data_scale.py"), "--sizes", "500"],
    [sys.executable, "-m", "cmunext", "bench", "serving", "--variant", "cmunext_s", "--per-client", "10"],
]

if __name__ == "__main__":
    for cmd in RUNS:
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
