"""The input reference in export_report.json: bins, the population stability index, its one reader."""

from __future__ import annotations

import math

import pytest

from core.reference import PSI_FLOOR, TOKEN_EDGES, BadReference, build_reference, psi, read_reference, token_counts


def test_token_counts_put_each_length_in_its_bin():
    counts = token_counts([0, 15, 16, 255, 256, 257, 5000], TOKEN_EDGES)
    assert len(counts) == len(TOKEN_EDGES) and sum(counts) == 7
    assert counts[0] == 2 and counts[1] == 1  # [0, 16), [16, 32)
    at = TOKEN_EDGES.index(256)
    assert counts[at - 1] == 1 and counts[at] == 2  # 255 apart from the texts that fill a 256 window
    assert counts[-1] == 1  # the last bin is open


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift():
    assert psi([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0)
    small, large = psi([50, 50], [55, 45]), psi([50, 50], [90, 10])
    assert 0 < small < 0.1 < large
    # (a - e) ln(a / e), summed over the bins' shares:
    assert large == pytest.approx((0.9 - 0.5) * math.log(0.9 / 0.5) + (0.1 - 0.5) * math.log(0.1 / 0.5))
    # An empty bin on one side is floored, not infinite.
    assert psi([1, 0], [0, 1]) == pytest.approx(2 * (1 - PSI_FLOOR) * math.log(1 / PSI_FLOOR))
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])


def test_read_reference_round_trips_and_names_what_is_wrong():
    ref = build_reference([20, 30, 300], "reviews", {"negative": 3, "positive": 1}, "train split")
    back = read_reference({"reference": ref.to_dict()})
    assert back == ref and back.label_share == {"negative": 0.75, "positive": 0.25}
    assert read_reference({}) is None and read_reference({"reference": None}) is None
    assert build_reference([5], "random", None, None).label_share is None
    broken = ref.to_dict()
    broken["tokens"]["counts"] = broken["tokens"]["counts"][:-1]
    with pytest.raises(BadReference, match="bins and counts"):
        read_reference({"reference": broken})
    with pytest.raises(BadReference, match="malformed"):
        read_reference({"reference": {"tokens": {}}})
