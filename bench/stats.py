"""Figures the bench reports beyond statistics.median: evenness and percentiles."""


def jain(xs):
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1 is even, 1/n is all on one."""
    xs = list(xs)
    sq = sum(x * x for x in xs)
    if not xs or sq == 0:
        return float("nan")
    return sum(xs) ** 2 / (len(xs) * sq)


def max_min(xs):
    """Largest over smallest (inf when the smallest is 0)."""
    lo, hi = min(xs), max(xs)
    return float("inf") if lo == 0 else hi / lo


def percentile(sorted_xs, q):
    """The q-quantile (0..1) of an already sorted list, nearest rank; None when empty."""
    if not sorted_xs:
        return None
    return sorted_xs[min(len(sorted_xs) - 1, int(round(q * (len(sorted_xs) - 1))))]
