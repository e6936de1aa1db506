"""Temperature calibration of the reward models (train/calibration.py)."""
import numpy as np
import pytest

from sparrow_jax.train.calibration import (binary_ece, calibrate_binary, calibrate_choice,
                                           top_label_ece)


def test_ece_of_known_cases():
    assert binary_ece(np.array([0.9, 0.9]), np.array([1, 0])) == pytest.approx(0.4)
    assert binary_ece(np.array([0.25, 0.75]), np.array([0, 1])) == pytest.approx(0.25)
    assert top_label_ece(np.array([[0.8, 0.2], [0.6, 0.4]]), np.array([0, 1])) == pytest.approx(
        0.5 * 0.2 + 0.5 * 0.6)


def test_overconfident_probabilities_get_a_temperature_above_one_and_a_lower_ece():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(size=4000)
    y = rng.random(4000) < 1 / (1 + np.exp(-true_logit))
    p = 1 / (1 + np.exp(-3.0 * true_logit))  # three times too sharp
    out = calibrate_binary(p, y)
    assert out["temperature"] == pytest.approx(3.0, rel=0.15)
    assert out["ece_after"] < 0.5 * out["ece_before"]


def test_squashed_choice_logits_get_a_temperature_below_one():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3000, 4)) * 2.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    target = np.array([rng.choice(4, p=row) for row in probs])
    logits[:, 3] = np.where(np.arange(3000) % 7 == 0, -np.inf, logits[:, 3])  # invalid candidates
    target = np.where(np.isinf(logits[np.arange(3000), target]), 0, target)
    out = calibrate_choice(logits / 4.0, target)  # four times too flat
    assert out["temperature"] < 0.4 and out["ece_after"] < out["ece_before"]


def test_too_few_examples_give_no_figures():
    assert calibrate_binary(np.array([0.5, 0.6]), np.array([0, 1])) is None
    assert calibrate_choice(np.zeros((3, 2)), np.zeros(3, int)) is None
