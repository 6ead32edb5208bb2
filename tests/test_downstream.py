"""Evaluation pieces against independent computations."""

import types

import numpy as np
import pytest

from cmcd_jax import defaults
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


def test_few_label_batch_is_fitted_to_the_labelled_records(capsys):
    stage = defaults.default_config().target_only  # batch 64
    four_devices = types.SimpleNamespace(size=4)
    assert downstream.fitted_to_labels(stage, 100, four_devices, "k") is stage
    fitted = downstream.fitted_to_labels(stage, 22, four_devices, "config.target_only.batch_size")
    assert fitted.batch_size == 20 and fitted.steps == stage.steps and stage.batch_size == 64
    assert ("config.target_only.batch_size=64 exceeds the 22 labelled records; training on "
            "batches of 20") in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^k: 3 labelled records cannot fill a batch over the "
                                         r"4 devices"):
        downstream.fitted_to_labels(stage, 3, four_devices, "k")
