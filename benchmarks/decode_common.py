"""Shared by the decode benchmarks: environment record, CUDA-graph timing, copy bandwidth, error measure."""

from __future__ import annotations

import json
import math
import platform
import statistics
from pathlib import Path

import torch

L2_FLUSH_BYTES = 256 * 2**20  # rotate inputs until a timed graph touches at least this much (H100 L2: 50 MiB)


def kernel_plan(batch: int, n_kv_heads: int, n_heads: int, head_dim: int, context: int, dtype: torch.dtype) -> dict:
    """The tile and split-K partition the library's decode kernel chooses for this shape on this GPU."""
    from attention_lab.kernels.decode_attention import launch_plan

    config, partition, parts = launch_plan(batch, n_kv_heads, n_heads, head_dim, context, dtype, "cuda")
    return {**vars(config), "partition_size": partition, "partitions": parts}


def timing_fields(times: dict, kv_bytes: int, copy_bytes_s: float) -> dict:
    """Per implementation: milliseconds, KV-read TB/s, and that bandwidth as a fraction of the measured copy.

    ``times`` maps a name to seconds, or to a list of repeated runs (:func:`time_runs`): then the median is
    reported and ``runs_ms`` / ``spread`` record every run and (max - min) / median."""
    runs = {name: t if isinstance(t, list) else [t] for name, t in times.items()}
    med = {name: statistics.median(r) for name, r in runs.items()}
    return {"ms": {name: t * 1e3 for name, t in med.items()},
            "tb_s": {name: kv_bytes / t / 1e12 for name, t in med.items()},
            "of_copy": {name: kv_bytes / t / copy_bytes_s for name, t in med.items()},
            "runs_ms": {name: [t * 1e3 for t in r] for name, r in runs.items()},
            "spread": {name: (max(r) - min(r)) / med[name] for name, r in runs.items()}}


def environment() -> dict:
    """Card, capability, SMs and versions: recorded in every result file."""
    import triton

    props = torch.cuda.get_device_properties(0)
    return {
        "card": torch.cuda.get_device_name(0),
        "capability": f"{props.major}.{props.minor}",
        "sms": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def half_dtype() -> torch.dtype:
    """The 16-bit type a benchmark measures in: bf16, or fp16 on a GPU without bf16 (sm_75, a Colab T4)."""
    from attention_lab.kernels.common import device_capability

    return torch.bfloat16 if device_capability("cuda") >= 80 else torch.float16


def start_decode_benchmark(script: str) -> tuple[dict, torch.dtype, float]:
    """Environment, dtype and measured copy bandwidth (bytes/s) of this GPU, printed as the run's first line."""
    import sys

    if not torch.cuda.is_available():
        sys.exit(f"{script} needs a CUDA GPU; the committed results are in attention_lab/results/")
    env = environment()
    copy_bytes_s = copy_bandwidth()
    print(f"{env['card']} | torch {env['torch']} | triton {env['triton']} | CUDA {env['cuda']} | "
          f"copy {copy_bytes_s / 1e12:.2f} TB/s", flush=True)
    return env, half_dtype(), copy_bytes_s


def copy_bandwidth(n_bytes: int = 2**31) -> float:
    """Bytes/s of a device-to-device copy, read + write counted (the ceiling a memory-bound kernel aims at)."""
    from attention_lab.costs.gpu_facts import measure_copy_bandwidth

    return measure_copy_bandwidth(n_bytes=n_bytes, repeats=20)


def copies_for(bytes_per_call: int) -> int:
    """How many input sets to rotate through so that repeated calls cannot be served from L2."""
    return max(1, math.ceil(L2_FLUSH_BYTES / max(bytes_per_call, 1)))


def time_graph(calls: list, replays: int = 15, min_calls: int = 8) -> float:
    """Median seconds per call of ``calls`` (callables, e.g. one per rotated input set), captured in a CUDA graph.

    A graph replays the launches without Python in between, so small kernels are timed by their
    GPU time, not by launch overhead; SDPA and the Triton kernels are timed the same way.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compile, allocate) outside the capture
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    rounds = max(1, math.ceil(min_calls / len(calls)))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(rounds):
            for call in calls:
                call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del graph
    return statistics.median(times) / (rounds * len(calls))


RUNS = 3  # every timed implementation is measured this many times (a new graph each), interleaved


def time_runs(named_calls: dict, runs: int = RUNS, replays: int = 15) -> dict[str, list[float]]:
    """Seconds per call of each implementation, ``runs`` times: {name: [run 1, run 2, ...]}.

    ``named_calls`` maps a name to its list of calls (:func:`time_graph`). The runs are interleaved
    (A, B, C, A, B, C, ...) so that a drift of the card's clock or temperature touches every
    implementation alike; each run captures its own graph and reports the median of its replays.
    """
    times = {name: [] for name in named_calls}
    for _ in range(runs):
        for name, calls in named_calls.items():
            times[name].append(time_graph(calls, replays=replays))
    return times


def summary(runs: list[float]) -> dict:
    """Median and spread of repeated runs (seconds): what every result row records besides the median."""
    median = statistics.median(runs)
    return {"median": median, "min": min(runs), "max": max(runs), "spread": (max(runs) - min(runs)) / median,
            "runs": list(runs)}


def time_eager(call, repeats: int = 5) -> float:
    """Median seconds of ``call()`` with CUDA events (for calls that sync and cannot be captured)."""
    call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN anywhere gives inf."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def save_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def sweep(make_calls, context: int, kv_bytes: int, replays: int = 5, configs: list | None = None,
          partitions: tuple = (None, 128, 256, 512, 1024, 2048), merges: tuple = (True, False)) -> list[dict]:
    """Time ``make_calls(config, partition_size, fused_merge)`` (a list of calls, one per rotated input set) over a
    few kernel configs, partition sizes and both merges (for tuning).

    ``partition_size=None`` is the library's own choice. Failures are recorded, not raised.
    """
    from attention_lab.kernels.decode_attention import DecodeConfig

    if configs is None:
        configs = [DecodeConfig(128, 4, 3), DecodeConfig(64, 4, 3), DecodeConfig(128, 4, 2)]
    rows = []
    for config in configs:
        for partition in partitions:
            if partition is not None and (partition % config.tile_n or partition >= context):
                continue
            for fused in merges:
                try:
                    seconds = time_graph(make_calls(config, partition, fused), replays=replays)
                except Exception as error:  # a config that does not compile or launch is reported, not fatal
                    rows.append({"config": vars(config), "partition": partition, "fused": fused,
                                 "error": repr(error)[:200]})
                    continue
                rows.append({"config": vars(config), "partition": partition, "fused": fused, "ms": seconds * 1e3,
                             "tb_s": kv_bytes / seconds / 1e12})
    return rows


def best_of(rows: list[dict]) -> dict:
    return min((r for r in rows if "ms" in r), key=lambda r: r["ms"])
