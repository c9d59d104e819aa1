"""Export a trained model to the fastest serving artifact that still matches eager PyTorch.

Candidates (all timed warm, median of `runs`, at `batch`, with the same number of threads; the ONNX ones
in alternating blocks so that a busy machine slows them alike, eager PyTorch before them on its own):

- `torch`: eager PyTorch, the reference. Measured for the ratio; never shipped, the serving image has no torch.
- `onnx`: the opset-17 ONNX graph as exported (TorchScript exporter, dynamic batch axis), ONNX Runtime with
  its graph optimisations switched off. In eval mode the exporter already folds every BatchNorm that
  directly follows a convolution (stem and conv blocks, up blocks) into that convolution.
- `onnx_bnfold`: the same graph with the remaining BatchNorms folded where that is exact. In CMUNeXt
  and Skip-Fusion blocks BN follows GELU, so it cannot go into the convolution before it; it can go
  into the convolution after it when that one has no zero padding (the 1x1 convolutions), since
  W(a*x + c) + b = (W*a)x + (W c + b). BNs before a residual add, a padded 3x3 convolution, an
  upsampling or a max-pool stay.
- `onnx_ort`, `onnx_bnfold_ort`: the two graphs with ONNX Runtime's full graph optimisations
  (GELU and Conv+activation fusions, layout transforms).

The fastest candidate whose sigmoid probabilities stay within `tolerance` of eager PyTorch on random
inputs at batch 1 and 8 is written as OUT/model.onnx, with OUT/export.json describing it.
"""
from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from cmunext_serving.runtime import EXPORT_JSON, session_options, sha256_file, sigmoid

from ..engine.weights import load_weights
from ..models.tta import served_network

log = logging.getLogger(__name__)

OPSET = 17
ARTIFACT = "model.onnx"
PARITY_BATCHES = (1, 8)
ORT_CANDIDATES = {  # name -> (graph, ONNX Runtime graph optimisation level)
    "onnx": ("exported", "ORT_DISABLE_ALL"),
    "onnx_bnfold": ("bnfold", "ORT_DISABLE_ALL"),
    "onnx_ort": ("exported", "ORT_ENABLE_ALL"),
    "onnx_bnfold_ort": ("bnfold", "ORT_ENABLE_ALL"),
}


def export_onnx(model: torch.nn.Module, path: str | Path, image_size: int, in_channels: int) -> Path:
    """Opset-17 ONNX with a dynamic batch axis (input `input`, output `logits`)."""
    import warnings
    path = Path(path)
    x = torch.zeros(1, in_channels, image_size, image_size)
    with warnings.catch_warnings():  # the size checks in forward() are traced as constants: fine for a fixed size
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model.eval(), (x,), str(path), opset_version=OPSET, dynamo=False,
                          input_names=["input"], output_names=["logits"], do_constant_folding=True,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(str(path))
    return path


# ---- BatchNorm folding ---------------------------------------------------------------------------------

def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _GraphEdit:
    """The lookups and edits BatchNorm folding needs on one ONNX graph: who produces and who reads a tensor,
    and initializers read as float64 arrays, written back as float32."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.g = model.graph
        self.inits = {t.name: t for t in self.g.initializer}
        self.outputs = {o.name for o in self.g.output}

    def consumers(self, name: str) -> list:
        return [n for n in self.g.node if name in n.input]

    def producer(self, name: str):
        return next((n for n in self.g.node if name in n.output), None)

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name]).astype(np.float64)

    def set_array(self, name: str, value: np.ndarray) -> None:
        self.inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    def conv_bias(self, conv, channels: int) -> np.ndarray:
        """CONV's bias, given a zero one first if it has none."""
        if len(conv.input) > 2 and conv.input[2]:
            return self.array(conv.input[2])
        name = conv.output[0] + "_folded_bias"
        self.g.initializer.append(numpy_helper.from_array(np.zeros(channels, np.float32), name))
        self.inits[name] = self.g.initializer[-1]
        if len(conv.input) == 2:
            conv.input.append(name)
        else:
            conv.input[2] = name
        return np.zeros(channels)

    def private_weights(self, conv) -> bool:
        """Whether CONV's weight and bias are initializers no other node reads, so they can be rewritten."""
        return all(i in self.inits and len(self.consumers(i)) == 1 for i in conv.input[1:] if i)


def _bn_affine(edit: _GraphEdit, bn) -> tuple[np.ndarray, np.ndarray]:
    """The inference BatchNorm as per-channel y = scale * x + shift."""
    gamma, beta, mean, var = (edit.array(i) for i in bn.input[1:5])
    scale = gamma / np.sqrt(var + _attrs(bn).get("epsilon", 1e-5))
    return scale, beta - mean * scale


def _fold_into_preceding_conv(edit: _GraphEdit, bn, scale: np.ndarray, shift: np.ndarray) -> bool:
    """Scale the producing Conv's output channels, if it is a Conv whose output only BN reads."""
    x, y = bn.input[0], bn.output[0]
    prev = edit.producer(x)
    if not (prev is not None and prev.op_type == "Conv" and len(edit.consumers(x)) == 1 and x not in edit.outputs
            and edit.private_weights(prev)):
        return False
    w = edit.array(prev.input[1])
    b = edit.conv_bias(prev, w.shape[0])
    edit.set_array(prev.input[1], w * scale[:, None, None, None])
    edit.set_array(prev.input[2], b * scale + shift)
    prev.output[0] = y
    edit.g.node.remove(bn)
    return True


def _fold_into_following_conv(edit: _GraphEdit, bn, scale: np.ndarray, shift: np.ndarray) -> bool:
    """Scale the reading Conv's input channels, if BN's output feeds only that Conv and it has group 1 and no
    padding: W(a*x + c) + b = (W*a)x + (W c + b)."""
    x, y = bn.input[0], bn.output[0]
    nxt = edit.consumers(y)
    if not (len(nxt) == 1 and y not in edit.outputs and nxt[0].op_type == "Conv" and nxt[0].input[0] == y):
        return False
    conv = nxt[0]
    a = _attrs(conv)
    if not (a.get("group", 1) == 1 and not any(a.get("pads", [])) and a.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")
            and edit.private_weights(conv)):
        return False
    w = edit.array(conv.input[1])
    b = edit.conv_bias(conv, w.shape[0])
    edit.set_array(conv.input[2], b + np.einsum("oikl,i->o", w, shift))
    edit.set_array(conv.input[1], w * scale[None, :, None, None])
    conv.input[0] = x
    edit.g.node.remove(bn)
    return True


def _fold_batchnorm(edit: _GraphEdit, bn) -> str:
    """Fold one BatchNorm if it can be; returns where it went: `into_preceding_conv`, `into_following_conv`
    or `kept` (also for a training-mode BN or one whose statistics are not constants)."""
    if len(bn.output) != 1 or not all(i in edit.inits for i in bn.input[1:5]):
        return "kept"
    scale, shift = _bn_affine(edit, bn)
    if _fold_into_preceding_conv(edit, bn, scale, shift):
        return "into_preceding_conv"
    if _fold_into_following_conv(edit, bn, scale, shift):
        return "into_following_conv"
    return "kept"


def fold_batchnorms(graph_model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """Fold inference BatchNorms into an adjacent convolution where the result is exact.

    Into the preceding Conv when the BN is the only reader of its output; into the following Conv
    when the BN output feeds only that Conv, which has group 1 and no padding (so every input pixel
    really is a*x+c; zero padding would not be). Returns the new model and counts.
    """
    model = onnx.ModelProto()
    model.CopyFrom(graph_model)
    edit = _GraphEdit(model)
    stats = Counter()
    for bn in [n for n in edit.g.node if n.op_type == "BatchNormalization"]:
        stats[_fold_batchnorm(edit, bn)] += 1
    stats["unused_initializers_removed"] = drop_unused_initializers(model)
    onnx.checker.check_model(model)
    return model, dict(stats)


def drop_unused_initializers(model: onnx.ModelProto) -> int:
    """Remove initializers no node reads (a folded BatchNorm's four tensors): ONNX Runtime would warn about
    each one at every start. Returns how many went."""
    used = {name for node in model.graph.node for name in node.input}
    unused = [t for t in model.graph.initializer if t.name not in used]
    for tensor in unused:
        model.graph.initializer.remove(tensor)
    return len(unused)


# ---- measuring ------------------------------------------------------------------------------------------

def _interleaved_medians(runners: dict, x: np.ndarray, runs: int, rounds: int = 3) -> dict[str, float]:
    """Median ms of each runner on X over RUNS timed runs, taken in ROUNDS turns of blocks (one block per runner
    per turn, its first run untimed): a busy, shared machine then slows all candidates alike, and one runtime's
    spinning threads (ONNX Runtime, OpenMP) do not land on the next one's timed runs."""
    rounds = max(1, min(rounds, runs))
    per_block = -(-runs // rounds)
    times = {name: [] for name in runners}
    for name, run in runners.items():  # first-call costs (allocations, ORT's lazy initialisation)
        run(x)
    for _ in range(rounds):
        for name, run in runners.items():
            run(x)
            for _ in range(per_block):
                t0 = time.perf_counter()
                run(x)
                times[name].append((time.perf_counter() - t0) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def _inputs(batch: int, channels: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, channels, size, size), dtype=np.float32)


def _torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """Eager PyTorch as a candidate: NCHW float32 in, the foreground probabilities out."""
    def run_torch(x):
        with torch.inference_mode():
            return torch.sigmoid(model(torch.from_numpy(x)))[:, 0].numpy()
    return run_torch


def _ort_runner(sess) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime session as a candidate, with the same inputs and outputs as `_torch_runner`'s."""
    inp = sess.get_inputs()[0].name

    def run(x):
        return sigmoid(sess.run(None, {inp: x})[0][:, 0])
    return run


def _write_graphs(model: torch.nn.Module, tmp: Path, size: int, channels: int) -> tuple[dict[str, Path], dict]:
    """The exported and the BatchNorm-folded graph, written in TMP, and where the model's BatchNorms went."""
    graphs = {"exported": export_onnx(model, tmp / "exported.onnx", size, channels)}
    exported = onnx.load(str(graphs["exported"]))
    folded, fold_stats = fold_batchnorms(exported)
    graphs["bnfold"] = tmp / "bnfold.onnx"
    onnx.save(folded, str(graphs["bnfold"]))
    n_bn_modules = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    n_bn_exported = sum(n.op_type == "BatchNormalization" for n in exported.graph.node)
    folding = {"batchnorm_modules": n_bn_modules,
               "folded_by_exporter_into_preceding_conv": n_bn_modules - n_bn_exported,
               "in_exported_graph": n_bn_exported, **fold_stats}
    return graphs, folding


def _check_ort_candidates(graphs: dict[str, Path], threads: int, parity_inputs: dict[int, np.ndarray],
                          reference: dict[int, np.ndarray], tolerance: float) -> tuple[dict, dict]:
    """One ONNX Runtime session per ORT_CANDIDATES entry, each checked against eager PyTorch's REFERENCE
    probabilities: (candidate descriptions, runners to time)."""
    import onnxruntime as ort

    candidates, runners = {}, {}
    for name, (graph, level) in ORT_CANDIDATES.items():
        settings = {"graph_optimization_level": level, "intra_op_num_threads": threads}
        sess = ort.InferenceSession(str(graphs[graph]), session_options(settings),
                                    providers=["CPUExecutionProvider"])
        run = _ort_runner(sess)
        diff = max(float(np.abs(run(x) - reference[b]).max()) for b, x in parity_inputs.items())
        candidates[name] = {"servable": True, "graph": graph, "session": settings, "max_abs_diff": diff,
                            "ok": diff <= tolerance}
        runners[name] = run
    return candidates, runners


def _add_timings(candidates: dict, by_batch: dict[int, dict[str, float]], timed_batches: list[int],
                 batch: int) -> None:
    """Each candidate's median ms per timed batch size, its ms at BATCH, and its speed-up over eager PyTorch."""
    for name, c in candidates.items():
        c["ms_by_batch"] = {str(b): by_batch[b][name] for b in timed_batches}

    for c in candidates.values():
        c["ms"] = c["ms_by_batch"][str(batch)]
    eager = candidates["torch"]["ms_by_batch"]
    for c in candidates.values():
        c["speedup_vs_torch"] = {b: round(eager[b] / ms, 3) for b, ms in c["ms_by_batch"].items()}


def _measure_candidates(model: torch.nn.Module, size: int, channels: int, *, batch: int,
                        report_batches: tuple[int, ...], runs: int, threads: int,
                        tolerance: float) -> tuple[dict, dict[str, bytes], dict]:
    """Check every candidate against eager PyTorch and time it: (candidates, each graph's bytes, BN folding)."""
    timed_batches = [batch] + [b for b in report_batches if b != batch]
    parity_inputs = {b: _inputs(b, channels, size, seed=b) for b in PARITY_BATCHES}
    timing_inputs = {b: _inputs(b, channels, size, seed=100 + b) for b in timed_batches}
    run_torch = _torch_runner(model)

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the same number of threads for every candidate
    try:
        reference = {b: run_torch(x) for b, x in parity_inputs.items()}
        candidates = {"torch": {"servable": False, "max_abs_diff": 0.0, "ok": True}}
        # eager first, on its own: right after ONNX Runtime has run, its spinning pool threads and OpenMP's
        # slow eager PyTorch down many times over on a busy 2-core machine
        by_batch = {b: _interleaved_medians({"torch": run_torch}, x, runs) for b, x in timing_inputs.items()}
        with tempfile.TemporaryDirectory(prefix="cmunext-export-") as tmp:
            graphs, folding = _write_graphs(model, Path(tmp), size, channels)
            ort_candidates, runners = _check_ort_candidates(graphs, threads, parity_inputs, reference, tolerance)
            candidates.update(ort_candidates)
            graph_bytes = {name: path.read_bytes() for name, path in graphs.items()}
        for b, x in timing_inputs.items():
            by_batch[b].update(_interleaved_medians(runners, x, runs))
    finally:
        torch.set_num_threads(torch_threads)
    _add_timings(candidates, by_batch, timed_batches, batch)
    return candidates, graph_bytes, folding


def _choose(candidates: dict, tolerance: float) -> str:
    """The fastest servable candidate within TOLERANCE of eager PyTorch."""
    usable = {n: c for n, c in candidates.items() if c["servable"] and c["ok"]}
    if not usable:
        diffs = {n: c["max_abs_diff"] for n, c in candidates.items()}
        raise RuntimeError(f"no ONNX candidate matches PyTorch within {tolerance}: {diffs}")
    return min(usable, key=lambda n: usable[n]["ms"])


def export_serving_artifact(weights: str | Path, out_dir: str | Path, *, tolerance: float = 1e-4, batch: int = 1,
                            runs: int = 30, threads: int = 2, report_batches: tuple[int, ...] = (),
                            tta: str = "none") -> dict:
    """Export, measure and choose; writes OUT/model.onnx and OUT/export.json and returns the latter's content
    (plus `path`, the artifact's absolute path). `report_batches` adds timings at other batch sizes; TTA
    (eval.tta) exports the network in that serving form, checked against the same form in eager PyTorch."""
    import onnxruntime as ort

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    network, meta = load_weights(weights)
    model = served_network(network, tta)
    size, channels = meta["image_size"], meta["in_channels"]
    candidates, graph_bytes, folding = _measure_candidates(
        model, size, channels, batch=batch, report_batches=report_batches, runs=runs, threads=threads,
        tolerance=tolerance)
    choice = _choose(candidates, tolerance)
    target = out_dir / ARTIFACT
    target.write_bytes(graph_bytes[candidates[choice]["graph"]])

    info = {
        "format": choice,
        "file": ARTIFACT,
        "sha256": sha256_file(target),
        "max_abs_diff": candidates[choice]["max_abs_diff"],
        "tolerance": tolerance,
        "session": candidates[choice]["session"],
        "candidates": candidates,
        "batch": batch,
        "runs": runs,
        "threads": threads,
        "image_size": size,
        "in_channels": channels,
        "num_classes": meta["num_classes"],
        "variant": meta["variant"],
        "members": meta["members"],  # an ensemble of fold models runs as one graph (cmunext/models/ensemble.py)
        "opset": OPSET,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "batchnorm_folding": folding,
        "weights_sha256": sha256_file(weights),
        "tta": tta,
    }
    (out_dir / EXPORT_JSON).write_text(json.dumps(info, indent=1))
    log.info("export: chose %s (%.1f ms at batch %d; eager %.1f ms), max |dp| %.2e", choice,
             candidates[choice]["ms"], batch, candidates["torch"]["ms"], info["max_abs_diff"])
    return {**info, "path": str(target.resolve())}
