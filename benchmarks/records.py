"""Bench records: the agent's measurement plus the device's verdicts, and how to print them."""

from __future__ import annotations

from mixprune.devices.fields import MB
from mixprune.devices.profiles import Profile

# The keys ARCHITECTURE.md promises (bench/<device>.json and `mixprune bench --json`), in print order.
REQUIRED_KEYS = (
    "device", "model", "latency_ms", "cold_start_ms", "peak_rss_mb", "model_bytes", "model_gzip_bytes",
    "runs", "warmup", "threads", "onnxruntime_version", "emulated",
)
LATENCY_KEYS = ("p50", "p90", "p99", "mean", "std", "min")

UNSTRUCTURED_NOTE = ("unstructured sparsity: onnxruntime's CPU provider has no sparse kernels, so the zeros make "
                     "the file compress better but do not make inference faster or use less memory")


def make_record(raw: dict, profile: Profile, model: str, **extra) -> dict:
    """The agent's raw record, labelled with the device and judged against its budgets.

    Exceeding a budget is not an error: the record says so and ranking leaves it out.
    """
    mem_budget, lat_budget, size_budget = profile.memory_budget_mb, profile.latency_budget_ms, profile.size_budget_mb
    record = {"device": profile.name, "model": model, **extra}
    record.update({k: raw[k] for k in REQUIRED_KEYS if k in raw and k not in ("device", "model")})
    record.update(
        emulated=profile.emulated,
        memory_budget_mb=mem_budget or None,
        latency_budget_ms=lat_budget or None,
        over_memory_budget=bool(mem_budget) and raw["peak_rss_mb"] > mem_budget,
        over_latency_budget=bool(lat_budget) and raw["latency_ms"]["p50"] > lat_budget,
        size_budget_mb=size_budget or None,
        over_size_budget=bool(size_budget) and raw["model_bytes"] / MB > size_budget,
        throttled=raw.get("throttled"),
    )
    record.update({k: v for k, v in raw.items() if k not in record})
    return record


def _size(n_bytes: int) -> str:
    return f"{n_bytes / MB:.2f} MB" if n_bytes >= MB else f"{n_bytes / 2**10:.1f} kB"


def format_record(r: dict) -> str:
    """A readable summary of one record (what `mixprune bench MODEL.onnx` prints)."""
    lat = r["latency_ms"]
    budget = "" if r["memory_budget_mb"] is None else (
        f"; budget {r['memory_budget_mb']:g} MB: " + ("OVER BUDGET" if r["over_memory_budget"] else "ok"))
    lat_budget = "" if r["latency_budget_ms"] is None else (
        f"; budget {r['latency_budget_ms']:g} ms: " + ("OVER BUDGET" if r["over_latency_budget"] else "ok"))
    lines = [
        f"{r['model']} on {r['device']} ({r['runner']}" + (", EMULATED: not real device timings)" if r["emulated"] else ")"),
        "latency ms   " + "  ".join(f"{k} {lat[k]:.3f}" for k in LATENCY_KEYS) + lat_budget,
        f"cold start   {r['cold_start_ms']:.1f} ms (session {r['session_create_ms']:.1f} + first run "
        f"{r['first_run_ms']:.1f}); agent start-up {r['agent_import_ms']:.0f} ms",
        f"peak RSS     {r['peak_rss_mb']:.1f} MB (after imports {r['baseline_rss_mb']:.1f} MB){budget}",
        f"model size   {_size(r['model_bytes'])} (gzip {_size(r['model_gzip_bytes'])})",
        f"setup        {r['runs']} runs after {r['warmup']} warm-up, {r['threads']} intra-op threads, "
        f"onnxruntime {r['onnxruntime_version']} on {r['machine']}",
    ]
    if r.get("throttled") not in (None, "0x0"):
        lines.append(f"throttled    {r['throttled']} (vcgencmd get_throttled: the board slowed down)")
    if r.get("note"):
        lines.append(f"note         {r['note']}")
    return "\n".join(lines)


def format_table(records: dict[str, dict]) -> str:
    """One line per model of a run directory (what `mixprune bench RUN_DIR` prints)."""
    head = (f"{'model':<24} {'p50 ms':>9} {'p90 ms':>9} {'cold ms':>9} {'peak MB':>9} {'size MB':>9} {'gzip MB':>9}"
            f" {'paired ms':>9} {'x dense':>15}  flags")
    rows = [head]
    for cid, r in records.items():
        flags = [f for f, on in (("emulated", r["emulated"]), ("over-memory-budget", r["over_memory_budget"]),
                                 ("over-latency-budget", r["over_latency_budget"])) if on]
        paired = r.get("interleaved")
        ratio = paired["ratio_to_reference"] if paired else None
        rows.append(f"{cid:<24} {r['latency_ms']['p50']:>9.3f} {r['latency_ms']['p90']:>9.3f} "
                    f"{r['cold_start_ms']:>9.1f} {r['peak_rss_mb']:>9.1f} {r['model_bytes'] / MB:>9.2f} "
                    f"{r['model_gzip_bytes'] / MB:>9.2f} " + (f"{paired['p50_ms']:>9.3f} " if paired else f"{'-':>9} ")
                    + (f"{ratio['median']:>5.2f} ({ratio['q1']:.2f}-{ratio['q3']:.2f})" if ratio else f"{'-':>15}")
                    + f"  {' '.join(flags)}")
    footer = ("paired ms / x dense: timed in one process with the dense model, runs interleaved (median ratio to "
              "dense, quartiles); p50 ms: each model alone in its own process")
    return "\n".join(rows + ([footer] if any(r.get("interleaved") for r in records.values()) else []))
