"""Temperature scaling's maths (core/calibration.py) on synthetic logits with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from core.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    accuracy,
    check_temperature,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
    scaled_probs,
)
from core.probs import softmax


def sample(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from softmax(logits): these logits are calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(n, classes))
    p = softmax(logits).astype(np.float64)
    cumulative = p.cumsum(axis=1)
    labels = (rng.random((n, 1)) > cumulative).sum(axis=1).clip(0, classes - 1)
    return logits, labels


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("k", [0.4, 1.0, 2.5])
def test_fit_recovers_a_known_temperature(classes, k):
    # logits k times the calibrated ones: softmax(logits / T) is calibrated at T = k, so the fit
    # must find k (over-confident k > 1, under-confident k < 1). 20,000 labels: ~1.5% noise.
    logits, labels = sample(20_000, classes, seed=classes)
    fitted = fit_temperature(logits * k, labels)
    assert fitted == pytest.approx(k, rel=0.05)
    # and it is the minimum of the NLL it claims to minimise
    assert nll(logits * k, labels, fitted) <= min(nll(logits * k, labels, fitted * f) for f in (0.95, 1.05))


def test_fit_stops_at_its_bounds():
    # Always right and ever surer as T falls: the NLL decreases to the lower bound.
    logits = np.array([[3.0, -3.0], [-2.0, 2.0]] * 50)
    labels = np.array([0, 1] * 50)
    assert fit_temperature(logits, labels) == pytest.approx(MIN_TEMPERATURE, rel=1e-3)
    # Labels independent of the logits: the best is to say 0.5 everywhere, T as high as allowed.
    noise = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]] * 25)
    coin = np.array([0, 1, 0, 1] * 25)
    assert fit_temperature(noise, coin) == pytest.approx(MAX_TEMPERATURE, rel=1e-3)


def test_ece_of_calibrated_probabilities_is_near_zero_and_of_over_confident_ones_large():
    logits, labels = sample(20_000, 2, seed=7)
    assert expected_calibration_error(softmax(logits), labels) < 0.015
    over = softmax(logits * 3.0)  # the same labels, said three times as loudly
    assert expected_calibration_error(over, labels) > 0.08
    # fitting T on one half calibrates the other half
    fitted = fit_temperature(logits[:10_000] * 3.0, labels[:10_000])
    assert expected_calibration_error(scaled_probs(logits[10_000:] * 3.0, fitted), labels[10_000:]) < 0.02


def test_ece_by_hand():
    # Two bins used (of 10): conf 0.9 twice (one right) -> |0.5 - 0.9|; conf 0.6 twice (both right) -> |1 - 0.6|.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    bins = reliability_bins(probs, labels, bins=10)
    assert [b.count for b in bins] == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert (bins[6].accuracy, bins[6].confidence) == (1.0, pytest.approx(0.6))
    assert (bins[9].accuracy, bins[9].confidence) == (0.5, pytest.approx(0.9))
    assert bins[0].accuracy is None and bins[0].to_dict()["count"] == 0
    # a confidence of exactly 1 is in the last bin, not past it
    assert reliability_bins(np.array([[1.0, 0.0]]), np.array([0]), bins=10)[9].count == 1


def test_temperature_never_changes_a_label():
    logits, labels = sample(5_000, 3, seed=3)
    for t in (0.05, 0.7, 1.0, 4.0, 90.0):
        scaled = scaled_probs(logits, t)
        assert np.array_equal(scaled.argmax(1), logits.argmax(1))
        assert accuracy(scaled, labels) == accuracy(softmax(logits), labels)
        assert np.allclose(scaled, softmax(logits / t), atol=1e-6)
    assert np.array_equal(scaled_probs(logits, None), softmax(logits))


@pytest.mark.parametrize("bad", [0, -1.5, float("nan"), float("inf"), "1.2", True, None])
def test_check_temperature_refuses_what_is_not_a_positive_number(bad):
    with pytest.raises(ValueError, match="temperature"):
        check_temperature(bad)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="labels must be in"):
        fit_temperature(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="need logits"):
        fit_temperature(np.zeros((0, 2)), np.array([], dtype=int))
    assert check_temperature(2) == 2.0
