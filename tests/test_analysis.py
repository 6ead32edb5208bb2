"""Tests for cmcd_jax.analysis.distance on distributions with known distance."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import norm

from cmcd_jax.analysis import c2st, clopper_pearson, mmd_rbf, modality_distance

N = 800  # rows per sample in the distribution tests
DIM = 4
PERMUTATIONS = 200


def gaussians(seed: int, delta: float, n: int = N, dim: int = DIM):
    """``N(0, I)`` and ``N(delta * e1, I)`` samples ``[n, dim]``; true TV is ``2 Phi(delta/2) - 1``."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    y[:, 0] += delta
    return x, y


def disc_and_ring(seed: int, n: int = N, dim: int = DIM):
    """Uniform disc of radius 1 and ring 1.5 < r < 2.5 in the first two coordinates, the
    others ``N(0, 1)`` ``[n, dim]``: disjoint supports, same mean, not linearly separable."""
    rng = np.random.default_rng(seed)

    def polar(radius):
        angle = rng.uniform(0, 2 * np.pi, n)
        circle = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
        return np.concatenate([circle, rng.normal(size=(n, dim - 2))], axis=1)

    return polar(np.sqrt(rng.uniform(0, 1, n))), polar(rng.uniform(1.5, 2.5, n))


# --------------------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------------------
def loop_mmd2(x, y, bandwidth):
    """Unbiased MMD^2 by explicit double loops over the rows."""
    def k(a, b):
        return math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / (2 * bandwidth ** 2))

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def loop_median_distance(z):
    """Median Euclidean distance over the pairs ``i < j`` of rows of ``z``."""
    return float(np.median([math.dist(a, b) for a, b in itertools.combinations(z, 2)]))


def small_samples(shift: float = 0.0):
    rng = np.random.default_rng(7)
    # 21 pooled rows: an even number (210) of pairs, so the median averages two.
    return rng.normal(size=(10, 3)), rng.normal(size=(11, 3)) + shift


# --------------------------------------------------------------------------------------
# Clopper-Pearson
# --------------------------------------------------------------------------------------
def test_clopper_pearson_closed_forms():
    # k = 0 and k = n have closed forms; k = n / 2 is symmetric about 1/2.
    n, alpha = 40, 0.05
    assert clopper_pearson(0, n) == (0.0, pytest.approx(1 - (alpha / 2) ** (1 / n)))
    assert clopper_pearson(n, n) == (pytest.approx((alpha / 2) ** (1 / n)), 1.0)
    lo, hi = clopper_pearson(n // 2, n)
    assert lo + hi == pytest.approx(1.0)
    assert 0.3 < lo < 0.5 < hi < 0.7
    # Wider at higher confidence.
    lo99, hi99 = clopper_pearson(n // 2, n, confidence=0.99)
    assert lo99 < lo and hi99 > hi


# --------------------------------------------------------------------------------------
# MMD against references
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bandwidth", [0.7, 2.0])
def test_mmd_matches_double_loop(bandwidth):
    x, y = small_samples(shift=0.5)
    result = mmd_rbf(x, y, bandwidth=bandwidth, permutations=10)
    assert result["mmd"] == pytest.approx(loop_mmd2(x.tolist(), y.tolist(), bandwidth), rel=1e-9)
    assert (result["n_x"], result["n_y"]) == (10, 11)


def test_mmd_median_heuristic_bandwidth():
    x, y = small_samples()
    result = mmd_rbf(x, y, permutations=10)
    median = loop_median_distance(np.concatenate([x, y]).tolist())
    assert result["bandwidth"] == pytest.approx(median, rel=1e-9)
    assert result["mmd"] == pytest.approx(loop_mmd2(x.tolist(), y.tolist(), median), rel=1e-9)


def test_mmd_p_value_matches_reference_permutation_test():
    # Same definition, independent permutations: Monte Carlo p-values agree.
    x, y = small_samples(shift=0.2)
    permutations = 2000
    result = mmd_rbf(x, y, bandwidth=1.0, permutations=permutations, seed=1)
    pooled = np.concatenate([x, y])
    observed = loop_mmd2(x.tolist(), y.tolist(), 1.0)
    sq = np.sum((pooled[:, None] - pooled[None]) ** 2, axis=-1)
    kernel = np.exp(-sq / 2.0)

    def stat(ix, iy):
        kxx, kyy = kernel[np.ix_(ix, ix)], kernel[np.ix_(iy, iy)]
        m, n = len(ix), len(iy)
        return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                - 2 * kernel[np.ix_(ix, iy)].mean())

    rng = np.random.default_rng(123)
    null = [stat(p[:10], p[10:]) for p in (rng.permutation(len(pooled)) for _ in range(permutations))]
    reference = (1 + sum(s >= observed for s in null)) / (1 + permutations)
    assert 0.05 < reference < 0.95  # a moderate p-value, so the comparison is informative
    assert result["p_value"] == pytest.approx(reference, abs=0.05)
    assert (result["p_value"] * (1 + permutations)) == pytest.approx(
        round(result["p_value"] * (1 + permutations)))


def test_mmd_p_value_counts_ties():
    # With a vanishing bandwidth the kernel is the identity: every labelling gives
    # MMD^2 = 0, ties the observed value, and counts towards the p-value.
    x, y = small_samples(shift=0.5)
    result = mmd_rbf(x, y, bandwidth=1e-3, permutations=PERMUTATIONS)
    assert result["mmd"] == 0.0
    assert result["p_value"] == 1.0


# --------------------------------------------------------------------------------------
# known distances
# --------------------------------------------------------------------------------------
def test_identical_distributions():
    p_values = []
    for seed in range(5):
        x, y = gaussians(seed, delta=0.0)
        mmd = mmd_rbf(x, y, seed=seed, permutations=PERMUTATIONS)
        p_values.append(mmd["p_value"])
        assert abs(mmd["mmd"]) < 0.01
    # Any one p-value may be small by chance (it is uniform under the null); all five
    # below 0.05 has probability 0.05^5.
    assert max(p_values) > 0.05, p_values
    test = c2st(*gaussians(10, delta=0.0))
    lo, hi = test["accuracy_ci"]
    assert lo <= 0.5 <= hi
    assert test["tv_lower_ci"][0] == 0.0
    assert test["tv_lower"] < 0.1


@pytest.mark.parametrize("delta", [1.0, 2.0])
def test_shifted_gaussians_tv_lower_bound(delta):
    true_tv = 2 * norm.cdf(delta / 2) - 1
    x, y = gaussians(20, delta, n=N + 200)
    test = c2st(x[:N], y)  # the larger sample is subsampled to N rows
    assert test["n_test"] == N
    lo, hi = test["accuracy_ci"]
    assert lo <= test["accuracy"] <= hi
    assert test["tv_lower"] == pytest.approx(max(0.0, 2 * test["accuracy"] - 1))
    assert test["tv_lower_ci"] == pytest.approx([max(0.0, 2 * lo - 1), min(1.0, 2 * hi - 1)])
    # A lower bound: its confidence interval reaches down to the true TV or below ...
    assert test["tv_lower_ci"][0] <= true_tv
    # ... and a near-Bayes classifier on 4-D Gaussians is not far below it.
    assert true_tv - 0.15 <= test["tv_lower"] <= true_tv + 0.05, (test, true_tv)
    assert mmd_rbf(x, y, permutations=PERMUTATIONS)["p_value"] == 1 / (1 + PERMUTATIONS)


def test_disjoint_supports():
    x, y = disc_and_ring(0)
    test = c2st(x, y)
    assert test["accuracy"] >= 0.98
    assert test["tv_lower"] >= 0.96
    assert test["tv_lower_ci"][1] == 1.0
    mmd = mmd_rbf(x, y, permutations=PERMUTATIONS)
    assert mmd["mmd"] > 0.03  # identical samples give |mmd| < 0.01
    assert mmd["p_value"] == 1 / (1 + PERMUTATIONS)


# --------------------------------------------------------------------------------------
# modality_distance
# --------------------------------------------------------------------------------------
KEYS = {"tv_lower", "tv_lower_ci", "c2st_accuracy", "mmd", "mmd_p_value", "n"}


def test_modality_distance_aligned_and_shifted():
    rng = np.random.default_rng(30)
    source = rng.normal(size=(2 * N, DIM))
    aligned = modality_distance(source, source + 0.01 * rng.normal(size=source.shape))
    assert set(aligned) == KEYS
    assert aligned["n"] == N
    assert aligned["tv_lower_ci"][0] == 0.0
    assert aligned["mmd_p_value"] > 0.01
    target = source.copy()
    target[:, 0] += 2.0
    shifted = modality_distance(source, target)
    assert shifted["tv_lower"] > 0.5
    assert shifted["mmd_p_value"] == 1 / (1 + PERMUTATIONS)


def test_modality_distance_deterministic_json_and_max_samples():
    x, y = gaussians(40, delta=1.0, n=2 * N + 100)
    first = modality_distance(x, y, seed=3, max_samples=N)
    assert first == modality_distance(x, y, seed=3, max_samples=N)
    assert json.loads(json.dumps(first)) == first
    assert first["n"] == N
    assert first != modality_distance(x, y, seed=4, max_samples=N)
    assert all(type(first[k]) is float for k in KEYS - {"tv_lower_ci", "n"})
    assert all(type(v) is float for v in first["tv_lower_ci"])
    assert type(first["n"]) is int


def test_modality_distance_unpaired_sizes():
    # Different row counts: independent samples, used whole (no halving) up to the
    # smaller count.
    x, y = gaussians(50, delta=2.0, n=N + 100)
    result = modality_distance(x[:N], y)
    assert result["n"] == N
    assert result["tv_lower"] > 0.5


@pytest.mark.parametrize("source_shape, target_shape, match", [
    ((50, 4), (50, 5), "feature dimensions differ"),
    ((15, 4), (15, 4), "too few samples"),
    ((5, 4), (40, 4), "too few samples"),
    ((50,), (50,), "2-D"),
])
def test_modality_distance_errors(source_shape, target_shape, match):
    with pytest.raises(ValueError, match=match) as info:
        modality_distance(np.zeros(source_shape), np.zeros(target_shape))
    assert str(source_shape) in str(info.value) and str(target_shape) in str(info.value)


def test_c2st_and_mmd_errors():
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match=r"\(20, 3\).*\(20, 2\)"):
        c2st(x, x[:, :2])
    with pytest.raises(ValueError, match="too few samples"):
        mmd_rbf(x, x[:5])
    with pytest.raises(ValueError, match="test_fraction"):
        c2st(x, x, test_fraction=1.0)
    with pytest.raises(ValueError, match="NaN"):
        mmd_rbf(x, np.full_like(x, np.nan))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_rbf(np.zeros((20, 3)), np.zeros((20, 3)))


def test_import_is_light():
    code = ("import sys, cmcd_jax.analysis; "
            "print([m for m in ('matplotlib', 'tensorflow', 'tensorflow_datasets') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
