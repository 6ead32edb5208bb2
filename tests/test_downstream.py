"""Evaluation pieces against independent computations."""

import numpy as np

from cmcd_jax.stages import downstream


def test_linear_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    train_y, test_y = np.repeat(np.arange(4), 10), np.repeat(np.arange(4), 50)
    train_x = centres[train_y] + rng.normal(size=(40, 16))
    test_x = centres[test_y] + rng.normal(size=(200, 16))
    acc = downstream.linear_probe(train_x, train_y, test_x, test_y, steps=200,
                                  learning_rate=1e-2, weight_decay=1e-2)
    assert acc > 0.95
    noise = downstream.linear_probe(rng.normal(size=(40, 16)), train_y, test_x, test_y,
                                    steps=200, learning_rate=1e-2, weight_decay=1e-2)
    assert noise < 0.6


def test_retrieval_top1_matches_bruteforce():
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(30, 8))
    queries = keys + rng.normal(size=(30, 8)) * 1.0
    expected = np.mean([np.argmax([q @ k / np.linalg.norm(k) for k in keys]) == i
                        for i, q in enumerate(queries)])
    assert downstream.retrieval_top1(queries, keys) == expected
    assert downstream.retrieval_top1(keys, keys) == 1.0
