"""The run a person follows: kfp.local's output digested to a line per step, the epochs and a failed step's
reason, with everything in the log file (the pipeline tests check it on real runs)."""
from __future__ import annotations

import io
import logging
import sys

from pipelines.progress import RunLog, captured, failure_reason

CYAN, GREEN, RED, RESET = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"

KFP_OUTPUT = f"""08:00:00.001 - INFO - Executing task {CYAN}'train-model'{RESET}
08:00:00.002 - INFO - Streamed logs:

    {{"executor_input": "a dump of every input, many lines of it"}}
    [KFP Executor 2026-11-26 08:00:01,000 INFO]: epoch 1/2: train_loss 1.3 val_loss 1.2 val_iou 0.10
    [KFP Executor 2026-11-26 08:00:02,000 INFO]: epoch 2/2: train_loss 1.1 val_loss 1.0 val_iou 0.20
08:00:03.000 - INFO - Task {CYAN}'train-model'{RESET} finished with status {GREEN}SUCCESS{RESET}
08:00:03.100 - INFO - Task validate-data cache hit (key=0123456789ab); skipping execution.
08:00:03.200 - INFO - Executing task {CYAN}'promote-model'{RESET}
    Traceback (most recent call last):
      File "<frozen runpy>", line 198, in _run_module_as_main
        exec(code, run_globals)
    cmunext.steps.StepFailed: not promoted: champion is now version 3, not 2
    with a second line of reason
08:00:04.000 - ERROR - Task {CYAN}'promote-model'{RESET} finished with status {RED}FAILURE{RESET}
08:00:04.100 - INFO - Skipping task package-model: upstream task(s) failed
08:00:04.200 - INFO - Skipping conditional task condition-2 (condition false)
"""


def test_digest_and_full_log(tmp_path):
    screen = io.StringIO()
    log = RunLog(tmp_path / "run.log", screen)
    for chunk in (KFP_OUTPUT[:100], KFP_OUTPUT[100:333], KFP_OUTPUT[333:]):  # lines arrive in pieces
        log.write(chunk)
    log.close()
    shown = screen.getvalue().splitlines()
    assert (tmp_path / "run.log").read_text() == KFP_OUTPUT  # everything, unchanged
    assert not any("executor_input" in line or "\x1b" in line for line in shown)
    text = "\n".join(shown)
    assert "train-model      started" in shown[0] and "train-model      done in" in shown[3]
    assert "epoch 1/2: train_loss 1.3" in shown[1] and "epoch 2/2" in shown[2]
    assert "validate-data    cached" in text and "promote-model    FAILURE in" in text
    assert "StepFailed: not promoted: champion is now version 3, not 2" in text
    assert "with a second line of reason" in text and "run_globals" not in text
    assert "package-model    skipped (an earlier step failed)" in text and "condition-2" not in text
    assert [(s["step"], s["status"]) for s in log.steps] == [
        ("train-model", "SUCCESS"), ("validate-data", "CACHED"), ("promote-model", "FAILURE")]


def test_verbose_streams_everything(tmp_path):
    screen = io.StringIO()
    with RunLog(tmp_path / "run.log", screen, verbose=True) as log:
        log.write(KFP_OUTPUT)
    assert screen.getvalue() == KFP_OUTPUT


def test_failure_reason_without_traceback_is_the_last_lines():
    assert failure_reason(["a", "", "b", "killed"], limit=2) == ["b", "killed"]


def test_captured_takes_stdout_logging_and_warnings_and_gives_them_back(tmp_path, capsys):
    import warnings
    before = logging.getLogger().handlers[:]
    with captured(tmp_path / "run.log"), warnings.catch_warnings():
        warnings.simplefilter("always")  # another library may have silenced UserWarning for the process
        print("    plain output")
        logging.getLogger("kfp").info("Executing task 'x'")
        warnings.warn("settings ['display_name'] have no effect")
    assert sys.stdout is not None and logging.getLogger().handlers == before
    text = (tmp_path / "run.log").read_text()
    assert "plain output" in text and "Executing task 'x'" in text and "have no effect" in text
    out = capsys.readouterr()
    assert "x                started" in out.out and "have no effect" not in out.out + out.err
