"""Is a serving window drawn from the same distribution as the version's reference? Three named
two-sample tests, then Holm's correction over them, so that a window raises drift with at most
`alpha` probability when nothing changed.

    class_mix   the predicted-class histogram: Pearson's chi-square test of homogeneity
                (scipy.stats.chi2_contingency; a permutation p-value when expected counts are small)
    confidence  the top probability: two-sample Kolmogorov-Smirnov (scipy.stats.ks_2samp)
    features    the projected penultimate features: maximum mean discrepancy with a Gaussian kernel
                (scikit-learn's rbf_kernel, median-distance bandwidth) and a permutation p-value
                (scipy.stats.permutation_test)

Why MMD is written here: the statistic is one line over scikit-learn's kernel matrix, and scipy
computes its permutation p-value; the libraries that package it (alibi-detect, hyppo) would bring
PyTorch or numba into the serving image for those few lines.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from transferflow.monitoring.sketch import Sketch

DEFAULT_ALPHA = 0.01  # family-wise, per window: about one false alarm in 100 windows (4 days, hourly)
PERMUTATIONS = 999  # the smallest p-value is 1/1000, far below alpha/3
MIN_IMAGES = 30  # fewer images in a window: not tested (too little to say anything)
MMD_ROWS = 500  # rows per side for MMD: enough power, and the kernel matrix stays ~8 MB
SMALL_EXPECTED = 5  # a chi-square cell expecting fewer counts: permutation p-value instead


class DriftTest(BaseModel):
    name: str  # class_mix | confidence | features
    method: str  # the library function
    statistic: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None  # Holm over the tests of this window
    fired: bool = False
    note: str = ""


class Verdict(BaseModel):
    """One window compared with its reference."""

    images: int
    reference_images: int
    alpha: float
    drift: bool | None  # None: not tested (too few images)
    tests: list[DriftTest] = []
    note: str = ""

    def fired(self) -> list[str]:
        return [test.name for test in self.tests if test.fired]


def compare(reference: Sketch, window: Sketch, alpha: float = DEFAULT_ALPHA, min_images: int = MIN_IMAGES,
            permutations: int = PERMUTATIONS, seed: int = 0) -> Verdict:
    """The window's verdict: each test's statistic and p-value, Holm-adjusted, and drift when any
    adjusted p-value is at most alpha."""
    base = {"images": window.images, "reference_images": reference.images, "alpha": alpha}
    if reference.classes != window.classes:
        return Verdict(**base, drift=None, note=f"the window's classes {window.classes} are not the "
                       f"reference's {reference.classes}: not comparable")
    if window.images < min_images:
        return Verdict(**base, drift=None,
                       note=f"{window.images} images, fewer than {min_images}: not tested")
    tests = [class_mix(reference, window, permutations, seed), confidence(reference, window),
             features(reference, window, permutations, seed)]
    holm(tests, alpha)
    return Verdict(**base, drift=any(test.fired for test in tests), tests=tests)


def class_mix(reference: Sketch, window: Sketch, permutations: int, seed: int) -> DriftTest:
    from scipy.stats import PermutationMethod, chi2_contingency

    table = np.stack([reference.predicted, window.predicted])
    table = table[:, table.sum(axis=0) > 0]
    result = DriftTest(name="class_mix", method="scipy.stats.chi2_contingency")
    if table.shape[1] < 2:
        return result.model_copy(update={"statistic": 0.0, "p_value": 1.0,
                                         "note": "one predicted class on both sides"})
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    method = None
    if expected.min() < SMALL_EXPECTED:
        method = PermutationMethod(n_resamples=permutations, rng=np.random.default_rng(seed))
        result.note = "permutation p-value (small expected counts)"
    found = chi2_contingency(table, correction=False, method=method)
    return result.model_copy(update={"statistic": float(found.statistic), "p_value": float(found.pvalue)})


def confidence(reference: Sketch, window: Sketch) -> DriftTest:
    from scipy.stats import ks_2samp

    found = ks_2samp(reference.reservoir.rows()[0], window.reservoir.rows()[0])
    return DriftTest(name="confidence", method="scipy.stats.ks_2samp", statistic=float(found.statistic),
                      p_value=float(found.pvalue))


def features(reference: Sketch, window: Sketch, permutations: int, seed: int) -> DriftTest:
    result = DriftTest(name="features", method="MMD (sklearn rbf_kernel) + scipy.stats.permutation_test")
    if reference.projection.checksum != window.projection.checksum:
        return result.model_copy(update={"note": "the window's feature projection differs from the "
                                         "reference's (another model or release): not compared"})
    rng = np.random.default_rng(seed)
    x, y = (subsample(sketch.reservoir.rows()[2], MMD_ROWS, rng) for sketch in (reference, window))
    statistic, p_value = mmd_test(x, y, permutations, rng)
    return result.model_copy(update={"statistic": statistic, "p_value": p_value})


def subsample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= limit else rows[np.sort(rng.choice(len(rows), limit, replace=False))]


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int,
             rng: np.random.Generator) -> tuple[float, float]:
    """(MMD², p-value): the biased MMD² estimate with a Gaussian kernel whose bandwidth is the
    median pairwise distance of the pooled rows (invariant to permutations, so the p-value stays
    exact), and scipy's permutation p-value on it."""
    from scipy.stats import permutation_test
    from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel

    pooled = np.concatenate([x, y]).astype(np.float64)
    distances = euclidean_distances(pooled, squared=True)
    median = np.median(distances[np.triu_indices(len(pooled), 1)])
    kernel = rbf_kernel(pooled, gamma=1.0 / max(median, 1e-12))
    n, m = len(x), len(y)

    def statistic(ix, iy, axis=-1):
        """MMD² = vᵀKv with v = 1/n on x's rows and -1/m on y's; batched over leading axes."""
        single = np.ndim(ix) == 1
        ix, iy = np.atleast_2d(ix), np.atleast_2d(iy)
        v = np.zeros((len(ix), n + m))
        np.put_along_axis(v, ix.astype(np.int64), 1.0 / n, axis=1)
        np.put_along_axis(v, iy.astype(np.int64), -1.0 / m, axis=1)
        value = np.einsum("bi,bi->b", v @ kernel, v)
        return value[0] if single else value

    found = permutation_test((np.arange(n), np.arange(n, n + m)), statistic, vectorized=True,
                             n_resamples=permutations, alternative="greater", rng=rng, batch=100)
    return float(found.statistic), float(found.pvalue)


def holm(tests: list[DriftTest], alpha: float) -> None:
    """Holm's step-down correction over the tests that ran (scipy has only Benjamini-Hochberg, which
    bounds the false discovery rate, not the family-wise error this needs): the i-th smallest
    p-value is multiplied by (m - i), running maxima kept; a test fires at adjusted p <= alpha."""
    ran = sorted((test for test in tests if test.p_value is not None), key=lambda test: test.p_value)
    running = 0.0
    for rank, test in enumerate(ran):
        running = max(running, min(1.0, (len(ran) - rank) * test.p_value))
        test.p_adjusted = running
        test.fired = running <= alpha
