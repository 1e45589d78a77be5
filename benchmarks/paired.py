"""Paired latency: models of a run directory timed in one agent process, their runs interleaved.

A model timed alone in its own process drifts with whatever else the machine does: two
equally fast models measured 1.3x apart that way, and 0.996x when interleaved in one
process. So the latency that ranks models comes from here: every model shares a process
with the reference (the dense model), and each round gives one paired ratio, its median
over the reference's median in the same round. Each group is timed in several processes,
because a process has a speed of its own that moves fp32 and INT8 kernels differently
(experiments/harness/README.md: one process's INT8/fp32 ratio was up to 23% from the
median over processes); the ratios of all of them are pooled. The median ratio, times the
reference's p50, puts every model on one scale (groups measured at different times
included); the quartiles of the pooled ratios are its noise.
"""

from __future__ import annotations

import statistics


def groups(reference: str, others: list[str], size: int) -> list[list[str]]:
    """The reference plus at most ``size - 1`` others per agent process."""
    step = max(1, size - 1)
    return [[reference, *others[i:i + step]] for i in range(0, len(others), step)]


def quartiles(values: list[float]) -> dict[str, float]:
    if len(values) == 1:
        return {"median": values[0], "q1": values[0], "q3": values[0]}
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3}


def paired_ratios(rounds_ms: list[float], reference_rounds_ms: list[float]) -> list[float]:
    return [m / r for m, r in zip(rounds_ms, reference_rounds_ms, strict=True)]


def summarize(measured: list[tuple[list[str], dict]], reference: str, bench_id: str) -> dict[str, dict]:
    """{model id: its ``interleaved`` block} from the agent record of each process and the ids it timed.

    The reference's p50 is the median of its p50 over the processes; each other model's
    ``p50_ms`` is the median of its pooled ratios times that.
    """
    reference_p50 = statistics.median(record["models"][0]["latency_ms"]["p50"] for _, record in measured)
    ratios: dict[str, list[float]] = {}
    per_process: dict[str, list[float]] = {}
    own: dict[str, list[float]] = {}
    group: dict[str, list[str]] = {}
    for ids, record in measured:
        ref_rounds = record["models"][0]["round_p50_ms"]
        for mid, entry in zip(ids, record["models"], strict=True):
            group.setdefault(mid, ids)
            own.setdefault(mid, []).append(entry["latency_ms"]["p50"])
            paired = [1.0] * len(ref_rounds) if mid == reference else paired_ratios(entry["round_p50_ms"], ref_rounds)
            ratios.setdefault(mid, []).extend(paired)
            per_process.setdefault(mid, []).append(statistics.median(paired))
    first = measured[0][1]
    blocks = {}
    for mid, pooled in ratios.items():
        ratio = quartiles(pooled)
        blocks[mid] = {
            "bench_id": bench_id, "reference": reference, "group": group[mid], "processes": len(own[mid]),
            "rounds": first["rounds"], "runs_per_round": first["runs_per_round"],
            "p50_ms": reference_p50 * ratio["median"], "ratio_to_reference": ratio,
            "process_ratios": per_process[mid], "own_p50_ms": statistics.median(own[mid]),
            "reference_p50_ms": reference_p50,
        }
    return blocks
