"""Distances between the source- and target-modality feature distributions.

The paper bounds the target modality's test error by a distance between the two
modalities' feature distributions in the shared embedding space. This module
estimates such distances from finite samples ``x [m, d]`` (source) and ``y [n, d]``
(target):

* :func:`c2st`: classifier two-sample test. A classifier trained to tell ``x`` from
  ``y`` has held-out balanced accuracy at most ``(1 + TV) / 2``, where ``TV`` is the
  total variation distance of the two distributions, so ``2 * accuracy - 1`` is a
  lower bound on ``TV`` (up to sampling error, which the exact Clopper-Pearson
  interval accounts for).
* :func:`mmd_rbf`: unbiased squared maximum mean discrepancy with a Gaussian (RBF)
  kernel, with a permutation-test p-value.
* :func:`modality_distance`: both, on held-out embeddings of the two modalities
  (paired or not); what every distillation run records.

Inputs are numpy arrays; outputs are dicts of python floats, ints and lists (JSON
serialisable). Results are deterministic given ``seed``.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

__all__ = ["c2st", "mmd_rbf", "modality_distance", "clopper_pearson", "MIN_SAMPLES"]

MIN_SAMPLES = 10
"""Fewest rows each sample must have."""

_HIDDEN = 64
_STEPS = 200
_LEARNING_RATE = 1e-2
_WEIGHT_DECAY = 0.1


def _shapes(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> str:
    """Both samples' names and shapes, for error messages."""
    return f"{x_name} has shape {x.shape}, {y_name} has shape {y.shape}"


def _check_samples(x: Any, y: Any, x_name: str = "x",
                   y_name: str = "y") -> Tuple[np.ndarray, np.ndarray]:
    """Validates two samples ``[m, d]`` and ``[n, d]``; returns them as float64 arrays."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    shapes = _shapes(x, y, x_name, y_name)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"samples must be 2-D [num_samples, dim]: {shapes}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {shapes}")
    if min(len(x), len(y)) < MIN_SAMPLES:
        raise ValueError(f"too few samples, need at least {MIN_SAMPLES} rows each: {shapes}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"samples contain NaN or inf: {shapes}")
    return x, y


def _subsample(rng: np.random.Generator, x: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows of ``x [m, d]`` drawn without replacement, in random order."""
    return x[rng.choice(len(x), size=n, replace=False)]


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Exact two-sided ``confidence`` interval for a binomial success probability."""
    alpha = 1.0 - confidence
    lo = stats.beta.ppf(alpha / 2, successes, trials - successes + 1) if successes > 0 else 0.0
    hi = (stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
          if successes < trials else 1.0)
    return float(lo), float(hi)


def _init_mlp(key: jax.Array, dim: int) -> Dict[str, jax.Array]:
    """Parameters of a ``dim -> _HIDDEN -> 1`` MLP (LeCun-normal weights, zero biases)."""
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (dim, _HIDDEN)) / np.sqrt(dim),
            "b1": jnp.zeros(_HIDDEN),
            "w2": jax.random.normal(k2, (_HIDDEN,)) / np.sqrt(_HIDDEN),
            "b2": jnp.zeros(())}


def _mlp_logits(params: Dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """Logits ``[n]`` of ``x [n, d]`` being a target-modality sample."""
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


@jax.jit
def _fit_mlp(key: jax.Array, x: jax.Array, labels: jax.Array) -> Dict[str, jax.Array]:
    """Trains the MLP full-batch on ``x [n, d]`` and 0/1 ``labels [n]``."""
    params = _init_mlp(key, x.shape[1])
    opt = optax.adamw(_LEARNING_RATE, weight_decay=_WEIGHT_DECAY)

    def loss(p: Dict[str, jax.Array]) -> jax.Array:
        return optax.sigmoid_binary_cross_entropy(_mlp_logits(p, x), labels).mean()

    def step(carry, _):
        p, state = carry
        updates, state = opt.update(jax.grad(loss)(p), state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), length=_STEPS)
    return params


def _classifier_correct(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                        y_test: np.ndarray, seed: int) -> int:
    """Trains on ``x_train`` (label 0) vs ``y_train`` (label 1); counts correct test rows."""
    train = np.concatenate([x_train, y_train])
    mean, std = train.mean(0), train.std(0) + 1e-8
    labels = np.concatenate([np.zeros(len(x_train)), np.ones(len(y_train))])
    params = _fit_mlp(jax.random.key(seed), jnp.asarray((train - mean) / std, jnp.float32),
                      jnp.asarray(labels, jnp.float32))
    test = jnp.asarray((np.concatenate([x_test, y_test]) - mean) / std, jnp.float32)
    predicted = np.asarray(_mlp_logits(params, test)) > 0
    truth = np.concatenate([np.zeros(len(x_test), bool), np.ones(len(y_test), bool)])
    return int(np.sum(predicted == truth))


def c2st(x: Any, y: Any, *, seed: int = 0, test_fraction: float = 0.5,
         confidence: float = 0.95) -> Dict[str, Any]:
    """Classifier two-sample test of ``x [m, d]`` against ``y [n, d]``.

    The larger sample is subsampled to the size of the smaller one; each sample is
    split into the same train/test fractions, so the test set is balanced and its
    accuracy is a balanced accuracy. A one-hidden-layer ReLU MLP (64 units) is
    trained full-batch (200 AdamW steps) on the training rows, standardised with their
    mean and standard deviation. Any classifier's expected balanced accuracy is at most
    ``(1 + TV) / 2``; the Clopper-Pearson interval treats the test rows as i.i.d.
    trials (with two fixed class counts it is, if anything, conservative).

    Returns:
      ``accuracy``: held-out accuracy; ``accuracy_ci``: its exact Clopper-Pearson
      ``confidence`` interval ``[lo, hi]``; ``tv_lower = max(0, 2 * accuracy - 1)``, a
      lower bound on the total variation distance, and ``tv_lower_ci`` its interval
      mapped from ``accuracy_ci`` (clipped to ``[0, 1]``); ``n_test``: test rows (both
      samples together).
    """
    x, y = _check_samples(x, y)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    n = min(len(x), len(y))
    x, y = _subsample(rng, x, n), _subsample(rng, y, n)
    n_test = min(max(int(round(test_fraction * n)), 1), n - 1)
    n_train = n - n_test
    correct = _classifier_correct(x[:n_train], y[:n_train], x[n_train:], y[n_train:], seed)
    accuracy = correct / (2 * n_test)
    lo, hi = clopper_pearson(correct, 2 * n_test, confidence)
    return {"accuracy": float(accuracy), "accuracy_ci": [lo, hi],
            "tv_lower": _tv_from_accuracy(accuracy),
            "tv_lower_ci": [_tv_from_accuracy(lo), _tv_from_accuracy(hi)],
            "n_test": 2 * n_test}


def _tv_from_accuracy(accuracy: float) -> float:
    """Total variation lower bound ``2 * accuracy - 1`` clipped to ``[0, 1]``."""
    return float(min(max(2.0 * accuracy - 1.0, 0.0), 1.0))


def _squared_distances(z: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances ``[N, N]`` of the rows of ``z [N, d]``."""
    sq = np.sum(z * z, axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)


def _mmd_statistics(kernel: np.ndarray, in_x: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 ``[P]`` for ``P`` labellings of a pooled sample.

    Args:
      kernel: ``[N, N]`` kernel matrix of the pooled sample.
      in_x: ``[N, P]`` boolean; column ``p`` marks the rows of sample ``x`` in
        labelling ``p`` (each column has the same number ``m`` of ``True``).
    """
    k0 = kernel - np.diag(np.diag(kernel))
    a = in_x.astype(np.float64)
    b = 1.0 - a
    m, n = a[:, 0].sum(), b[:, 0].sum()
    ka = k0 @ a
    kb = k0.sum(1, keepdims=True) - ka
    xx, xy, yy = (a * ka).sum(0), (b * ka).sum(0), (b * kb).sum(0)
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2.0 * xy / (m * n)


def mmd_rbf(x: Any, y: Any, *, bandwidth: float | None = None, permutations: int = 200,
            seed: int = 0, max_samples: int = 1000) -> Dict[str, Any]:
    """Unbiased MMD^2 of ``x [m, d]`` and ``y [n, d]`` with a permutation test.

    The kernel is ``k(a, b) = exp(-|a - b|^2 / (2 * bandwidth^2))``. With
    ``bandwidth=None`` it is the median heuristic: the median Euclidean distance
    between distinct rows of the pooled (subsampled) sample. Samples larger than
    ``max_samples`` rows are subsampled at random. The p-value is
    ``(1 + #{permuted statistic >= observed}) / (1 + permutations)``, permuting the
    pooled rows' sample labels.

    Returns:
      ``mmd``: the unbiased MMD^2 estimate (can be slightly negative);
      ``p_value``; ``bandwidth`` used; ``n_x``, ``n_y``: rows used.
    """
    x, y = _check_samples(x, y)
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    rng = np.random.default_rng(seed)
    x = _subsample(rng, x, min(len(x), max_samples))
    y = _subsample(rng, y, min(len(y), max_samples))
    pooled = np.concatenate([x, y])
    sq_dist = _squared_distances(pooled)
    if bandwidth is None:
        bandwidth = float(np.median(np.sqrt(sq_dist[np.triu_indices(len(pooled), 1)])))
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth} (the median heuristic "
                         "gives 0 when most pooled rows coincide)")
    kernel = np.exp(-sq_dist / (2.0 * bandwidth ** 2))
    observed = np.arange(len(pooled)) < len(x)
    shuffled = rng.permuted(np.repeat(observed[:, None], permutations, axis=1), axis=0)
    stat = _mmd_statistics(kernel, observed[:, None])[0]
    null = _mmd_statistics(kernel, shuffled)
    p_value = (1 + int(np.sum(null >= stat))) / (1 + permutations)
    return {"mmd": float(stat), "p_value": float(p_value), "bandwidth": float(bandwidth),
            "n_x": len(x), "n_y": len(y)}


def modality_distance(source_features: Any, target_features: Any, *, seed: int = 0,
                      max_samples: int = 1000) -> Dict[str, Any]:
    """Distance between source- and target-modality features in the shared space.

    Args:
      source_features: ``[m, d]`` held-out source-modality embeddings.
      target_features: ``[n, d]`` target-modality embeddings. With ``m == n`` row ``i``
        is taken to come from the same example as row ``i`` of ``source_features``;
        with ``m != n`` the two are independent samples.
      seed: randomness of the split, the subsampling and the classifier.
      max_samples: most rows used per modality.

    Both tests assume two independent samples, which paired rows are not (aligned
    embeddings of one example are close). Paired examples are therefore split in two
    halves at random: the source rows of one half are compared with the target rows
    of the other. Then both modalities are subsampled to the same number of rows.

    Returns:
      ``tv_lower``, ``tv_lower_ci`` (``[lo, hi]``) and ``c2st_accuracy`` from
      :func:`c2st`; ``mmd`` and ``mmd_p_value`` from :func:`mmd_rbf`; ``n``: rows used
      per modality.
    """
    source, target = _check_samples(source_features, target_features, "source_features",
                                    "target_features")
    rng = np.random.default_rng(seed)
    if len(source) == len(target):
        if len(source) < 2 * MIN_SAMPLES:
            raise ValueError(f"too few samples, need at least {2 * MIN_SAMPLES} paired rows "
                             "(split into two halves): "
                             + _shapes(source, target, "source_features", "target_features"))
        order, half = rng.permutation(len(source)), len(source) // 2
        source, target = source[order[:half]], target[order[half:2 * half]]
    n = min(len(source), len(target), max_samples)
    source, target = _subsample(rng, source, n), _subsample(rng, target, n)
    test = c2st(source, target, seed=seed)
    mmd = mmd_rbf(source, target, seed=seed, max_samples=n)
    return {"tv_lower": test["tv_lower"], "tv_lower_ci": test["tv_lower_ci"],
            "c2st_accuracy": test["accuracy"], "mmd": mmd["mmd"],
            "mmd_p_value": mmd["p_value"], "n": n}
