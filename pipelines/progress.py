"""A local pipeline run a person can follow: one line per step as it starts and ends (with its status
and duration), the training epochs, a failed step's reason; kfp.local's full output (every executor's
inputs, outputs and log) goes to a file, or to the screen as well with `--verbose`.

kfp.local writes everything through `print` and the root logger to `sys.stdout`, and sets its handler up
again for every task, so redirecting `sys.stdout` (and the root logger) for the length of the run sees all
of it, the steps' own output included (it arrives through kfp's pipe from each step's process).
"""
from __future__ import annotations

import io
import logging
import re
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*m")
START = re.compile(r"Executing task '([\w-]+)'")
END = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
CACHED = re.compile(r"Task ([\w-]+) cache hit \(key=(\w+)\)")
SKIPPED = re.compile(r"Skipping (conditional )?task ([\w-]+)")
GROUP = re.compile(r"condition-\d+$")  # a dsl.If group, not a step
EPOCH = re.compile(r"(epoch \d+/\d+: .*)$")
KFP_INDENT = "    "  # kfp indents each step's own output by four spaces


class RunLog(io.TextIOBase):
    """A text stream: every line into LOG_FILE; a digest of them (or all, with VERBOSE) to SCREEN."""

    def __init__(self, log_file: Path, screen: TextIO, verbose: bool = False) -> None:
        self.path = log_file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(log_file, "w", encoding="utf-8", errors="replace")
        self.screen, self.verbose = screen, verbose
        self.partial = ""
        self.task: str | None = None
        self.started: dict[str, float] = {}
        self.task_lines: list[str] = []
        self.steps: list[dict] = []  # {"step", "status", "seconds"} in the order they ended

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.file.write(text)
        if self.verbose:
            self.screen.write(text)
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            self._line(ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        if not self.file.closed:
            self.file.flush()
        self.screen.flush()

    def close(self) -> None:
        if self.partial:
            self._line(ANSI.sub("", self.partial))
        self.file.close()
        super().close()

    def _say(self, text: str) -> None:
        if not self.verbose:
            self.screen.write(text + "\n")
            self.screen.flush()

    def _line(self, line: str) -> None:
        now = time.time()
        stamp = time.strftime("%H:%M:%S")
        if m := START.search(line):
            self.task, self.task_lines = m.group(1), []
            self.started[self.task] = now
            self._say(f"  {stamp}  {self.task:<16} started")
        elif m := END.search(line):
            step, status = m.group(1), m.group(2)
            seconds = now - self.started.get(step, now)
            self.steps.append({"step": step, "status": status, "seconds": round(seconds, 1)})
            self._say(f"  {stamp}  {step:<16} {'done' if status == 'SUCCESS' else status} in {seconds:.1f} s")
            if status != "SUCCESS":
                for reason in failure_reason(self.task_lines):
                    self._say(f"      {reason}")
                self._say("      (the step's whole output is in the run's log, named below)")
            self.task = None
        elif m := CACHED.search(line):
            self.steps.append({"step": m.group(1), "status": "CACHED", "seconds": 0.0, "cache_key": m.group(2)})
            self._say(f"  {stamp}  {m.group(1):<16} cached")
        elif (m := SKIPPED.search(line)) and not GROUP.match(m.group(2)):
            why = "its condition is false" if m.group(1) else "an earlier step failed"
            self._say(f"  {stamp}  {m.group(2):<16} skipped ({why})")
        elif self.task is not None:
            self.task_lines.append(line[len(KFP_INDENT):] if line.startswith(KFP_INDENT) else line)
            if m := EPOCH.search(line):
                self._say(f"                {self.task:<16} {m.group(1)}")


def failure_reason(lines: list[str], limit: int = 40) -> list[str]:
    """The exception a step died of: the text after its last traceback's frames (else its last lines)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return [line for line in lines if line.strip()][-limit:]
    after = lines[starts[-1] + 1:]
    first = next((i for i, line in enumerate(after) if line and not line.startswith(" ")), len(after))
    reason = [line for line in after[first:] if line.strip()]
    return reason[:limit] + ([f"... ({len(reason) - limit} more lines in the log)"] if len(reason) > limit else [])


@contextmanager
def captured(log_file: Path, verbose: bool = False) -> Iterator[RunLog]:
    """Route kfp.local's output (stdout and the root logger) through a RunLog for the length of the block."""
    real = sys.stdout
    log = RunLog(log_file, real, verbose)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s", "%H:%M:%S"))
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    # kfp.local warns once per step about settings it ignores: into the log, not onto the screen
    saved_showwarning = warnings.showwarning
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: log.write(
        warnings.formatwarning(message, category, filename, lineno, line))
    sys.stdout = log
    try:
        yield log
    finally:
        sys.stdout = real
        warnings.showwarning = saved_showwarning
        root.handlers, root.level = saved_handlers, saved_level
        log.close()
