"""The bench's resampling of its rounds (benchmarks/resample.py): pure functions, no timing."""

from __future__ import annotations

import random
import statistics
import sys
from typing import Any

from helpers import REPO

sys.path.insert(0, str(REPO))

from benchmarks.resample import Sample, met_shares, resample


def two_paths(ours: list[float], native: list[float]) -> Sample:
    return {"g": {"ours": {"restore": {"1": ours}}, "native": {"restore": {"1": native}}}}


def ratio_target(limit: float) -> Any:
    def judge(s: Sample) -> list[dict[str, Any]]:
        paths = s["g"]
        value = statistics.median(paths["ours"]["restore"]["1"]) / statistics.median(paths["native"]["restore"]["1"])
        return [{"target": "ratio", "met": value <= limit}, {"target": "undecided", "met": None}]
    return judge


def test_a_resample_draws_whole_rounds() -> None:
    native = [float(i) for i in range(1, 32)]
    samples = two_paths([10 * v for v in native], native)
    samples["g"]["native"]["restore: frozen"] = {"1": [v / 2 for v in native]}
    again = resample(samples, random.Random(1))["g"]
    drawn = again["native"]["restore"]["1"]
    assert len(drawn) == 31 and len(set(drawn)) < 31  # with replacement
    assert again["ours"]["restore"]["1"] == [10 * v for v in drawn]  # the same rounds for every path
    assert again["native"]["restore: frozen"]["1"] == [v / 2 for v in drawn]  # and for the frozen times


def test_met_shares_tell_a_firm_result_from_a_coin_flip() -> None:
    rng = random.Random(7)
    native = [100 + rng.uniform(-20, 20) for _ in range(31)]
    firm = met_shares(two_paths([1.2 * v for v in native], native), ratio_target(1.1), resamples=200)
    assert firm == {"ratio": 0.0}  # 1.2x in every round: never within 1.1x; the undecided one is left out
    noisy = [100 + rng.uniform(-20, 20) for _ in range(31)]
    shares = met_shares(two_paths(noisy, native), ratio_target(statistics.median(noisy) / statistics.median(native)),
                        resamples=200)
    assert 0.2 < shares["ratio"] < 0.8  # at its own limit: the run cannot tell
