"""The noise rule: spread = sample standard deviation of the last 5 validations; within noise below the larger."""
import statistics

from project import noise


def test_spread_is_the_sample_std_of_the_last_five():
    scores = [0.1, 0.2, 0.60, 0.62, 0.65, 0.63, float("nan"), 0.70]
    assert noise.last_scores(scores) == [0.60, 0.62, 0.65, 0.63, 0.70]
    assert noise.spread(scores) == statistics.stdev([0.60, 0.62, 0.65, 0.63, 0.70])
    assert noise.spread([0.5]) is None and noise.spread([]) is None
    assert noise.level([0.5, 0.7]) == f"last 2: 0.6000 +- {statistics.stdev([0.5, 0.7]):.4f}"


def test_within_noise_uses_the_larger_spread():
    assert noise.within_noise(0.01, 0.005, 0.02) is True
    assert noise.within_noise(0.03, 0.005, 0.02) is False
    assert noise.within_noise(-0.01, 0.02) is True  # the sign does not matter
    assert noise.within_noise(0.01, None) is None
    assert noise.verdict(0.03, 0.02).startswith("(beyond noise")
