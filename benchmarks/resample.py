"""How sure one run is of each target: the share of bootstrap resamples of its rounds in which it is met.

A target is a ratio of medians of ~31 runs that each spread over tens of milliseconds, and its
limit is a few percent away: one run says "met" or "not met" where the next may say the other.
Resampling the run's own rounds (with replacement) and judging every target again shows how
firmly the run decided: ~50 % means it could not tell, near 0 % or 100 % that it could.

Paths alternate (A B C A B C ...), so the values of one round were measured side by side: a
resample draws whole rounds, the same ones for every path of a group at one op and N.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

Sample = dict[str, dict[str, dict[str, dict[str, list[float]]]]]  # group -> path -> op -> N -> values, as in bench.py
RESAMPLES = 1000


def resample(samples: Sample, rng: random.Random) -> Sample:
    """``samples`` with each group's rounds drawn with replacement (per op and N, shared by its paths)."""
    out: Sample = {}
    for group, paths in samples.items():
        rounds: dict[tuple[str, str, int], list[int]] = {}
        for path, ops in paths.items():
            for op, by_n in ops.items():
                for n, values in by_n.items():
                    # "restore: frozen" comes from the same runs as "restore"
                    key = (op.split(":")[0], n, len(values))
                    picks = rounds.setdefault(key, [rng.randrange(len(values)) for _ in values])
                    out.setdefault(group, {}).setdefault(path, {}).setdefault(op, {})[n] = [values[i] for i in picks]
    return out


def met_shares(samples: Sample, judge: Callable[[Sample], list[dict[str, Any]]],
               resamples: int = RESAMPLES, seed: int = 0) -> dict[str, float]:
    """For each target ``judge`` decides (``{"target": name, "met": bool | None, ...}``): the share
    of ``resamples`` resamples of ``samples`` in which it is met. Targets never decided are left out."""
    rng = random.Random(seed)
    met: Counter[str] = Counter()
    judged: Counter[str] = Counter()
    for _ in range(resamples):
        for t in judge(resample(samples, rng)):
            if t["met"] is not None:
                judged[t["target"]] += 1
                met[t["target"]] += bool(t["met"])
    return {name: met[name] / judged[name] for name in judged}
