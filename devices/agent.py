"""The device agent: benchmark one ONNX model with onnxruntime in a fresh process.

Self-contained on purpose: it imports only the standard library, numpy and onnxruntime,
so a Raspberry Pi needs nothing but ``pip install onnxruntime numpy``. Runners copy this
one file to the device (or run it locally / under qemu) and read back the single JSON
line it prints on stdout:

    python agent.py MODEL.onnx --json-config '{"runs": 100, "warmup": 10, "intra_op_threads": 4}'
    python agent.py REFERENCE.onnx A.onnx B.onnx --json-config '{"runs": 100, "rounds": 20}'

Success: the record (see ARCHITECTURE.md "bench" keys) and exit code 0. Failure: one line
``{"error": "<message>"}`` and exit code 2, so every transport reports the same way.

One model (isolated): baseline RSS (interpreter + numpy + onnxruntime imported), session
creation, first inference (cold start), warm-up, timed runs with perf_counter_ns, then
peak RSS of this process (before anything else allocates), then file and gzip sizes.

Several models (interleaved): every model is loaded in this one process and warmed up,
then ``rounds`` rounds each run every model ``runs / rounds`` times, in an order that
rotates and reverses from round to round, after one untimed run that refills the caches
the previous model evicted. Whatever slows the machine down during a round slows all of
them, so the per-round ratios between models stay true when absolute times drift.
"""

import time

_T_START_NS = time.perf_counter_ns()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from glob import glob  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

_T_IMPORTED_NS = time.perf_counter_ns()

MB = 2**20  # bytes; the same MB as mixprune.devices.fields.MB (this file imports nothing of mixprune)

DEFAULTS = {
    "runs": 100,
    "warmup": 10,
    "intra_op_threads": 0,  # 0: every core this process may use
    "inter_op_threads": 1,
    "allow_spinning": True,
    "graph_optimization_level": "all",
    "execution_providers": ["CPUExecutionProvider"],
    "shapes": {},  # input name -> list of ints, for dynamic dimensions
    "seed": 0,
    "rounds": 20,  # interleaved measurement only
}

OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

# onnxruntime's type strings -> numpy dtypes the agent can generate inputs for.
FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
INT_TYPES = {
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64,
}


class AgentError(Exception):
    """Anything that stops the measurement: reported as {"error": message}, exit 2."""


def one_line(exc):
    """onnxruntime's messages can span lines; the error record is one line."""
    return " ".join(str(exc).split())


# --- the machine ------------------------------------------------------------------------
def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def rss_mb():
    """Current resident set size of this process (MB; Linux /proc, None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb():
    """Peak resident set size of this process (MB).

    On Linux the kernel's VmHWM for this process image. Not getrusage's ru_maxrss: that one
    keeps the high-water mark of the process this one was forked from across exec, so an
    agent started by a big process would report its parent's memory.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 2**10 / MB  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak * 2**10 / MB  # bytes on macOS, KiB elsewhere


def _read_number(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def thermal_state():
    """CPU frequencies (MHz, per core) and temperatures (deg C, per thermal zone); None where absent."""
    freqs = [_read_number(p) for p in sorted(glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"))]
    temps = {}
    for zone in sorted(glob("/sys/class/thermal/thermal_zone*")):
        milli = _read_number(os.path.join(zone, "temp"))
        if milli is not None:
            try:
                with open(os.path.join(zone, "type")) as f:
                    name = f.read().strip()
            except OSError:
                name = os.path.basename(zone)
            temps[name] = milli / 1000.0
    freqs = [f / 1000.0 for f in freqs if f is not None]
    return {"cpu_mhz": freqs or None, "temperature_c": temps or None}


def throttled():
    """Raspberry Pi firmware throttling flags (``vcgencmd get_throttled``), e.g. "0x0"; None elsewhere."""
    if not shutil.which("vcgencmd"):
        return None
    try:
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().partition("=")[2] or None


def gzip_size(path):
    """Bytes of the gzip-compressed file (level 6), streamed so it costs no memory."""
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip container
    total = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MB), b""):
            total += len(comp.compress(block))
    return total + len(comp.flush())


# --- the model --------------------------------------------------------------------------
def make_session(model, config):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config["intra_op_threads"]
    opts.inter_op_num_threads = config["inter_op_threads"]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = config["graph_optimization_level"]
    if level not in OPT_LEVELS:
        raise AgentError(f"graph_optimization_level must be one of {sorted(OPT_LEVELS)}, got {level!r}")
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
    spin = "1" if config["allow_spinning"] else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    available = ort.get_available_providers()
    missing = [p for p in config["execution_providers"] if p not in available]
    if missing:
        raise AgentError(f"execution provider(s) {missing} not available here; this onnxruntime has {available}")
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=config["execution_providers"])
    except Exception as exc:  # onnxruntime raises its own exception types; its message is the point
        raise AgentError(f"onnxruntime refused {os.path.basename(model)}: {one_line(exc)}") from exc


def _fixed(dim):
    return isinstance(dim, int) and dim >= 0


def resolve_shape(inp, given):
    """Concrete shape for one model input (declared dims, dynamic ones from ``given``); None if unknown."""
    declared = list(inp.shape)
    if given is None:
        return declared if all(_fixed(d) for d in declared) else None
    given = [int(d) for d in given]
    if len(given) != len(declared):
        raise AgentError(f"--shape {inp.name}={'x'.join(map(str, given))} has {len(given)} dims; "
                         f"the model declares {len(declared)}: {declared}")
    for i, (d, g) in enumerate(zip(declared, given)):
        if g <= 0 or (_fixed(d) and d != g):
            raise AgentError(f"--shape {inp.name}: dim {i} is {g}, but the model declares {declared}")
    return given


def make_inputs(session, shapes, seed):
    """Random inputs from the model's declared inputs: floats N(0,1), integers 0/1, bools.

    Integer inputs are usually token / segment ids or masks; 0 and 1 are valid indices
    for any embedding table, and timing does not depend on the values.
    """
    inputs = session.get_inputs()
    names = [i.name for i in inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise AgentError(f"--shape names {unknown}, but the model's inputs are {names}")
    rng = np.random.default_rng(seed)
    feeds, undeclared = {}, []
    for inp in inputs:
        shape = resolve_shape(inp, shapes.get(inp.name))
        if shape is None:
            undeclared.append(f"{inp.name} [{', '.join(map(str, inp.shape))}]")
            continue
        if inp.type in FLOAT_TYPES:
            feeds[inp.name] = rng.standard_normal(shape).astype(FLOAT_TYPES[inp.type])
        elif inp.type in INT_TYPES:
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(INT_TYPES[inp.type])
        elif inp.type == "tensor(bool)":
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise AgentError(f"input {inp.name} has type {inp.type}, which the agent cannot generate")
    if undeclared:
        example = " ".join(f"--shape {i.name}=" + "x".join(str(d) if _fixed(d) else "N" for d in i.shape)
                           for i in inputs if i.name not in feeds)
        raise AgentError(f"the model has dynamic dimensions in {', '.join(undeclared)}; give concrete "
                         f"sizes, e.g. {example}")
    return feeds


def latency_stats(samples_ns):
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean()),
        "std": float(ms.std(ddof=1)) if ms.size > 1 else 0.0, "min": float(ms.min()), "max": float(ms.max()),
    }


# --- the measurement --------------------------------------------------------------------
def _settings(config):
    config = {**DEFAULTS, **config}
    runs, warmup, rounds = int(config["runs"]), int(config["warmup"]), int(config["rounds"])
    if runs < 1 or warmup < 0 or rounds < 1:
        raise AgentError(f"runs and rounds must be >= 1 and warmup >= 0, got runs={runs} rounds={rounds} "
                         f"warmup={warmup}")
    if config["intra_op_threads"] == 0:
        config["intra_op_threads"] = usable_cores()
    return {**config, "runs": runs, "warmup": warmup, "rounds": rounds}


def _load(model, config):
    """Session, inputs and the cold-start times (session creation, first run) of one model."""
    if not os.path.isfile(model):
        raise AgentError(f"model file {model} does not exist")
    t0 = time.perf_counter_ns()
    session = make_session(model, config)
    t1 = time.perf_counter_ns()
    feeds = make_inputs(session, config["shapes"], config["seed"])
    t2 = time.perf_counter_ns()
    try:
        session.run(None, feeds)
    except Exception as exc:
        raise AgentError(f"onnxruntime failed to run {os.path.basename(model)}: {one_line(exc)}") from exc
    t3 = time.perf_counter_ns()
    return session, feeds, (t1 - t0) / 1e6, (t3 - t2) / 1e6


def _timed(session, feeds, runs):
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feeds)
        samples.append(time.perf_counter_ns() - start)
    return samples


def _setup(config, session, feeds):
    """What the measurement ran with (the same keys in both kinds of record)."""
    return {
        "warmup": config["warmup"],
        "threads": config["intra_op_threads"],
        "inter_op_threads": config["inter_op_threads"],
        "allow_spinning": bool(config["allow_spinning"]),
        "graph_optimization_level": config["graph_optimization_level"],
        "execution_providers": session.get_providers(),
        "inputs": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in feeds.items()},
        "onnxruntime_version": ort.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "usable_cores": usable_cores(),
    }


def benchmark(model, config):
    """One model, alone in this process: latency, cold start, peak RSS and sizes."""
    config = _settings(config)
    baseline_rss = rss_mb()
    state_before = thermal_state()
    session, feeds, create_ms, first_ms = _load(model, config)
    _timed(session, feeds, config["warmup"])
    samples = _timed(session, feeds, config["runs"])
    peak = peak_rss_mb()
    state_after = thermal_state()
    return {
        "model": model,
        "latency_ms": latency_stats(samples),
        "cold_start_ms": create_ms + first_ms,
        "session_create_ms": create_ms,
        "first_run_ms": first_ms,
        "agent_import_ms": (_T_IMPORTED_NS - _T_START_NS) / 1e6,
        "peak_rss_mb": peak,
        "baseline_rss_mb": baseline_rss,
        "model_bytes": os.path.getsize(model),
        "model_gzip_bytes": gzip_size(model),
        "runs": config["runs"],
        **_setup(config, session, feeds),
        "before": state_before,
        "after": state_after,
        "throttled": throttled(),
    }


def round_order(count, round_index):
    """Model indices for one round: rotated by the round number, reversed every other round,
    so no model always runs first or always follows the same neighbour."""
    shift = round_index % count
    order = list(range(shift, count)) + list(range(shift))
    return order[::-1] if round_index % 2 else order


def interleave(models, config):
    """Several models in this one process, their runs interleaved over rounds (module docstring).

    Per model: the latency statistics of all its timed runs and ``round_p50_ms``, the median
    of each round (the caller pairs them across models, round by round).
    """
    config = _settings(config)
    if len(models) < 2:
        raise AgentError("interleaved timing needs at least two models")
    state_before = thermal_state()
    loaded = [_load(model, config)[:2] for model in models]
    for session, feeds in loaded:
        _timed(session, feeds, config["warmup"])
    per_round = max(1, -(-config["runs"] // config["rounds"]))  # ceil: at least ``runs`` timed runs in all
    samples = [[] for _ in models]
    round_p50 = [[] for _ in models]
    for r in range(config["rounds"]):
        for i in round_order(len(models), r):
            session, feeds = loaded[i]
            session.run(None, feeds)  # refill the caches the previous model evicted
            taken = _timed(session, feeds, per_round)
            samples[i].extend(taken)
            round_p50[i].append(float(np.median(taken)) / 1e6)
    state_after = thermal_state()
    return {
        "models": [{"model": model, "latency_ms": latency_stats(s), "round_p50_ms": p50, "model_bytes":
                    os.path.getsize(model)} for model, s, p50 in zip(models, samples, round_p50)],
        "rounds": config["rounds"],
        "runs_per_round": per_round,
        **_setup(config, *loaded[0]),
        "peak_rss_mb": peak_rss_mb(),
        "before": state_before,
        "after": state_after,
        "throttled": throttled(),
    }


def main():
    parser = argparse.ArgumentParser(description="Benchmark ONNX models with onnxruntime; prints one JSON line. "
                                                 "One model: measured alone; several: interleaved in one process.")
    parser.add_argument("models", nargs="+", metavar="model", help="path of an .onnx file")
    parser.add_argument("--json-config", default="{}",
                        help="JSON object overriding " + ", ".join(sorted(DEFAULTS)))
    args = parser.parse_args()
    try:
        try:
            config = json.loads(args.json_config)
        except ValueError as exc:
            raise AgentError(f"--json-config is not valid JSON: {exc}") from exc
        if not isinstance(config, dict) or set(config) - set(DEFAULTS):
            raise AgentError(f"--json-config must be an object with keys among {sorted(DEFAULTS)}")
        record = benchmark(args.models[0], config) if len(args.models) == 1 else interleave(args.models, config)
    except AgentError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
