"""The step benchmark's own arithmetic (benchmarks/bench_cs_step.py): pairing, the median's interval, load."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
from scipy import stats

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The script as a module, with benchmarks/ on sys.path as when it runs (it imports machine_load)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("bench_cs_step", BENCHMARKS / "bench_cs_step.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


class FakeBench:
    """Times a step as its position in the sequence of calls, so the test can see which steps were adjacent."""

    def __init__(self):
        self.calls: list[str] = []

    def timed(self, fn):
        fn()
        return float(len(self.calls))


def configs(fake):
    return {name: (lambda name=name: fake.calls.append(name)) for name in ("none", "add", "separate", "reg")}


def test_each_step_with_cs_is_timed_next_to_its_own_step_without(bench):
    fake = FakeBench()
    times = bench.rounds(fake, configs(fake), pairs=4, warmup=1)
    for name in ("add", "separate"):
        assert len(times[name]) == len(times[f"none {name}"]) == 4
        assert all(abs(a - b) == 1 for a, b in zip(times[name], times[f"none {name}"], strict=True))


def test_which_step_comes_first_alternates_between_rounds(bench):
    fake = FakeBench()
    times = bench.rounds(fake, configs(fake), pairs=4, warmup=0)
    first = [a < b for a, b in zip(times["add"], times["none add"], strict=True)]
    assert first == [False, True, False, True]


def test_the_regulariser_alone_has_no_pair_and_none_pools_every_pair(bench):
    fake = FakeBench()
    times = bench.rounds(fake, configs(fake), pairs=3, warmup=0)
    assert "none reg" not in times and len(times["reg"]) == 3
    assert len(times["none"]) == 6


@pytest.mark.parametrize("n", range(1, 40))
def test_median_interval_has_the_binomial_coverage_and_is_the_narrowest_such(bench, n):
    values = [float(v) for v in range(n)]
    interval = bench.median_interval(values)

    def coverage(k):  # P(x_(k) <= median <= x_(n+1-k)) for a continuous distribution
        return 1 - 2 * stats.binom.cdf(k - 1, n, 0.5)

    if coverage(1) < 0.95:
        assert interval is None
        return
    k = int(interval[0]) + 1
    assert interval == (values[k - 1], values[n - k])
    assert coverage(k) >= 0.95 - 1e-12 and (k + 1 > math.ceil(n / 2) or coverage(k + 1) < 0.95)


def test_cpu_busy_is_a_share(bench):
    import machine_load

    busy = machine_load.cpu_busy(0.2)
    assert math.isnan(busy) or 0.0 <= busy <= 1.0


@pytest.mark.parametrize(("busy", "quiet"), [(0.0, True), (0.5, False)])
def test_load_line_marks_a_busy_run(bench, busy, quiet):
    import machine_load

    line = machine_load.load_line((0.0, (0.1, 0.1, 0.1)), (busy, (0.1, 0.1, 0.1)))
    assert ("a quiet run" in line) is quiet and ("busy**" in line) is not quiet


class FakeStepBench(FakeBench):
    def configurations(self, torch_path):
        return configs(self)


def test_the_headline_pair_gets_its_own_rounds_and_none_pools_both_sets(bench):
    fake = FakeStepBench()
    times = bench.measure(fake, pairs=5, other_pairs=2, warmup=0, torch_path=False)
    assert len(times["add"]) == len(times["none add"]) == 5
    assert len(times["separate"]) == len(times["reg"]) == 2
    assert len(times["none"]) == 5 + 2
