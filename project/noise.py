"""One rule for "is this difference real?", used by the final log line, analyze and compare.

A run's validation score moves from epoch to epoch (100 validation images: +-0.02 is common). Its spread is the
sample standard deviation (ddof=1) of the last 5 validations (fewer if there are fewer; none below 2). A
difference smaller than the larger of the two spreads is "within noise".
"""
import math
import statistics

WINDOW = 5


def last_scores(scores) -> list[float]:
    values = [float(s) for s in scores if s is not None and s == s and s != ""]
    return values[-WINDOW:]


def spread(scores) -> float | None:
    """Sample standard deviation of the last 5 validation scores; None with fewer than 2."""
    last = last_scores(scores)
    return statistics.stdev(last) if len(last) >= 2 else None


def level(scores) -> str:
    """'last 5: 0.851 +- 0.006' (the mean of the last validations and their spread), or '' with none."""
    last = last_scores(scores)
    if not last:
        return ""
    s = spread(last)
    return f"last {len(last)}: {statistics.fmean(last):.4f}" + (f" +- {s:.4f}" if s is not None else "")


def within_noise(difference: float, *spreads) -> bool | None:
    """True when |difference| is smaller than the larger spread; None when no spread is known."""
    known = [s for s in spreads if s is not None and not math.isnan(s)]
    return abs(difference) < max(known) if known else None


def verdict(difference: float, *spreads) -> str:
    noise = within_noise(difference, *spreads)
    largest = max((s for s in spreads if s is not None), default=None)
    if noise is None:
        return "(spread unknown: fewer than 2 validations)"
    return f"({'within' if noise else 'beyond'} noise: spread {largest:.4f})"
