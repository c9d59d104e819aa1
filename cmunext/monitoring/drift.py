"""Drift of a served window against the model's reference: one two-sample Kolmogorov-Smirnov test per feature,
and one test on the image content as a whole, a maximum mean discrepancy (MMD, RBF kernel, permutation p-value)
on the image features taken together, which sees a joint change that no single marginal shows (a new probe
moves the histogram's shape without moving its mean). MMD on the model's bottleneck features would need the
pixels, which the log keeps only on opt-in; Alibi Detect and Evidently would add a stack for two tests scipy and
numpy do in a page. Every test runs at p_value divided by the number of tests (Bonferroni), so a window drawn
from the reference raises drift with probability at most p_value (measured: tests/test_monitoring.py).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import ks_2samp

from cmunext_serving.observe import FEATURES, image_features

CONTENT = tuple(image_features(np.zeros((2, 2), np.uint8)))  # the image features, taken together by the MMD
MMD_SAMPLE = 500  # per side: the kernel matrix stays 1000 x 1000


def detect(reference: dict, records: list[dict], p_value: float, seed: int = 0) -> dict:
    """{"drift", "requests", "features": {name: {test, statistic, p_value, threshold, drifted}}, "content": ...}."""
    names = [n for n in FEATURES if reference["features"].get(n) and all(n in r for r in records)]
    threshold = p_value / (len(names) + 1)  # + 1: the content test
    features = {}
    for name in names:
        ref = np.asarray(reference["features"][name], float)
        served = np.asarray([r[name] for r in records], float)
        res = ks_2samp(ref, served)
        features[name] = {"test": "ks", "statistic": float(res.statistic), "p_value": float(res.pvalue),
                          "threshold": threshold, "drifted": bool(res.pvalue < threshold),
                          "reference_mean": float(ref.mean()), "served_mean": float(served.mean())}
    content = _content_test(reference, records, threshold, seed)
    drifted = any(f["drifted"] for f in features.values()) or content["drifted"]
    return {"drift": drifted, "requests": len(records), "features": features, "content": content,
            "p_value": p_value, "tests": len(names) + 1}


def _content_test(reference: dict, records: list[dict], threshold: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    permutations = int(np.ceil(5 / threshold))  # the smallest p-value it can give is a fifth of the threshold
    ref = np.column_stack([reference["features"][n] for n in CONTENT]).astype(float)
    served = np.asarray([[r[n] for n in CONTENT] for r in records], float)
    ref, served = (_sample(x, MMD_SAMPLE, rng) for x in (ref, served))
    scale = ref.std(axis=0)
    scale[scale == 0] = 1.0
    both = np.vstack([ref, served]) / scale
    stat, p = mmd_test(both, len(ref), permutations, rng)
    return {"test": "mmd", "features": list(CONTENT), "statistic": stat, "p_value": p, "threshold": threshold,
            "permutations": permutations, "drifted": bool(p < threshold)}


def _sample(x: np.ndarray, n: int, rng) -> np.ndarray:
    return x if len(x) <= n else x[rng.choice(len(x), n, replace=False)]


def mmd_test(both: np.ndarray, n_first: int, permutations: int, rng) -> tuple[float, float]:
    """Unbiased MMD² between the first N_FIRST rows of BOTH and the rest (RBF kernel, median-distance bandwidth),
    and its permutation p-value (the permutations as one matrix product per chunk)."""
    norms = np.sum(both ** 2, axis=1)
    sq = np.maximum(norms[:, None] + norms[None, :] - 2 * both @ both.T, 0.0)
    positive = sq[np.triu_indices(len(both), 1)]
    positive = positive[positive > 0]
    kernel = np.exp(-sq / (np.median(positive) if positive.size else 1.0))
    np.fill_diagonal(kernel, 0.0)
    labels = (np.arange(len(both)) < n_first).astype(float)
    observed = _mmd2(kernel, labels[:, None])[0]
    exceed = 0
    for start in range(0, permutations, 1000):
        shuffled = np.column_stack([rng.permutation(labels) for _ in range(min(1000, permutations - start))])
        exceed += int(np.sum(_mmd2(kernel, shuffled) >= observed))
    return float(observed), float((exceed + 1) / (permutations + 1))


def _mmd2(kernel: np.ndarray, first: np.ndarray) -> np.ndarray:
    """MMD² for each column of FIRST (1 = first sample, 0 = second)."""
    second = 1.0 - first
    m, n = first.sum(axis=0), second.sum(axis=0)
    k_first, k_second = kernel @ first, kernel @ second
    xx = np.sum(first * k_first, axis=0) / (m * (m - 1))
    yy = np.sum(second * k_second, axis=0) / (n * (n - 1))
    xy = np.sum(first * k_second, axis=0) / (m * n)
    return xx + yy - 2 * xy


def verdict_line(result: dict, model: str, version: str) -> str:
    if not result["drift"]:
        return (f"no drift: {model} v{version}, {result['requests']} requests; {result['tests']} tests "
                f"(KS per feature, MMD on the image content) at p < {result['p_value']:g} overall")
    named = [f"{n} (KS {f['statistic']:.2f}, p={f['p_value']:.1e})" for n, f in result["features"].items() if f["drifted"]]
    if result["content"]["drifted"]:
        named.append(f"image content (MMD, p={result['content']['p_value']:.1e})")
    return f"DRIFT: {model} v{version}, {result['requests']} requests; drifted: " + ", ".join(named)
