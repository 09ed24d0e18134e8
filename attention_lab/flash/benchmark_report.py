"""Read and plot the committed GPU results of ``benchmarks/flash.py`` (chapter 10 and the README).

The benchmarks write ``flash_benchmark.json``, ``flash_flex.json`` and ``flash_hopper.json`` (the Hopper fast path
step by step, ``benchmarks/hopper_steps.py``; read with :mod:`attention_lab.book.results`);
on a CPU the notebook plots them
instead of measuring. Throughput is counted the usual way: a forward pass does ``4·B·H·N²·D`` floating
point operations (two matrix products), half of that when causal, and forward + backward 3.5 times the
forward (the backward's five matrix products are 2.5 forwards).
"""

from __future__ import annotations

METHODS = {"naive": "naive (reference, N×N in fp32)", "sdpa_flash": "PyTorch SDPA, flash backend",
           "sdpa_cudnn": "PyTorch SDPA, cuDNN backend", "flex": "PyTorch FlexAttention (torch.compile)",
           "triton": "this chapter's Triton kernel",
           "triton_scaled": "the same, scores scaled before the max (before the FMA)",
           "triton_teaching": "the teaching kernels alone (no Hopper path)"}
STEPS = {"two_pass": "1. two passes over K (safe softmax)", "online": "2. online softmax: one pass, all blocks masked",
         "skip": "3. + skip hidden blocks, unmasked interior", "tuned": "4. + autotuned tiles"}


def attention_flops(batch: int, heads: int, n: int, head_dim: int, causal: bool, mode: str = "fwd") -> float:
    """Floating-point operations of one attention call: 4·B·H·N²·D, halved if causal, ×3.5 for forward+backward."""
    flops = 4.0 * batch * heads * n * n * head_dim * (0.5 if causal else 1.0)
    return flops * (3.5 if mode == "fwd_bwd" else 1.0)


def rows(results: dict, **where) -> list[dict]:
    """The timing rows whose fields equal ``where`` (e.g. ``head_dim=128, causal=True, mode="fwd"``)."""
    return [r for r in results["rows"] if all(r.get(k) == v for k, v in where.items())]


def ratio_range(results: dict, head_dim: int, mode: str, min_n: int = 0, method: str = "triton",
                baseline: str = "sdpa_flash") -> tuple[float, float] | None:
    """(min, max) over N >= ``min_n`` and causal/non-causal of ``method``'s speed over ``baseline``'s."""
    ratios = []
    for r in rows(results, head_dim=head_dim, mode=mode, method=method):
        if r["n"] < min_n or r["tflops"] is None:
            continue
        base = rows(results, head_dim=head_dim, mode=mode, method=baseline, n=r["n"], causal=r["causal"])
        if base and base[0]["tflops"]:
            ratios.append(r["tflops"] / base[0]["tflops"])
    return (min(ratios), max(ratios)) if ratios else None


def table(results: dict, mode: str = "fwd") -> str:
    """A text table of TFLOP/s per (head_dim, causal, N) and method, with the ratio to SDPA-flash."""
    methods = [m for m in METHODS if rows(results, mode=mode, method=m)]  # the methods this run measured
    lines = [f"{'D':>4} {'causal':>6} {'N':>6} " + " ".join(f"{m:>11}" for m in methods) + "  triton/flash"]
    keys = sorted({(r["head_dim"], r["causal"], r["n"]) for r in rows(results, mode=mode)})
    for head_dim, causal, n in keys:
        cells, by_method = [], {}
        for method in methods:
            found = rows(results, head_dim=head_dim, causal=causal, n=n, mode=mode, method=method)
            value = found[0]["tflops"] if found else None
            by_method[method] = value
            cells.append(f"{value:>11.0f}" if value else f"{'—':>11}")
        ratio = (f"{by_method['triton'] / by_method['sdpa_flash']:.2f}×"
                 if by_method.get("triton") and by_method.get("sdpa_flash") else "—")
        lines.append(f"{head_dim:>4} {str(causal):>6} {n:>6} " + " ".join(cells) + f"  {ratio:>11}")
    return "\n".join(lines)


def plot_tflops(results: dict, axes=None):
    """TFLOP/s against N for every method: rows forward / forward+backward, columns (head_dim, causal)."""
    import matplotlib.pyplot as plt

    panels = sorted({(r["head_dim"], r["causal"]) for r in results["rows"]})
    modes = [m for m in ("fwd", "fwd_bwd") if rows(results, mode=m)]  # a forward-only run has one row of panels
    if axes is None:
        _, axes = plt.subplots(len(modes), len(panels), figsize=(4.2 * len(panels), 3.5 * len(modes)), sharex=True,
                               squeeze=False)
    for row, mode in enumerate(modes):
        for col, (head_dim, causal) in enumerate(panels):
            ax = axes[row][col]
            for method, label in METHODS.items():
                found = sorted(rows(results, head_dim=head_dim, causal=causal, mode=mode, method=method),
                               key=lambda r: r["n"])
                found = [r for r in found if r["tflops"]]
                if found:
                    ax.plot([r["n"] for r in found], [r["tflops"] for r in found], "o-", label=label,
                            lw=2.5 if method == "triton" else 1.5)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{'forward' if mode == 'fwd' else 'forward + backward'}, D={head_dim}"
                         f"{', causal' if causal else ''}", fontsize=10)
            ax.set_xlabel("sequence length N (tokens)")
            ax.set_ylabel("TFLOP/s")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    env = results["environment"]
    axes[0][0].figure.suptitle(f"Attention throughput on {env['card']} ({results['dtype']}, B·N = "
                               f"{results['tokens']} tokens, H·D = {results['hidden']})")
    axes[0][0].figure.tight_layout()
    return axes


MARKERS = {"naive": "s", "sdpa_flash": "o", "sdpa_cudnn": "^", "flex": "D", "triton": "*", "triton_scaled": "x",
           "triton_teaching": "x"}
COLORS = {"naive": "tab:blue", "sdpa_flash": "tab:orange", "sdpa_cudnn": "tab:green", "flex": "tab:purple",
          "triton": "tab:red", "triton_scaled": "tab:brown",
          "triton_teaching": "tab:brown"}


def _memory_panel(results: dict, mode: str, ax) -> None:
    """One panel of :func:`plot_memory`: extra MiB against N for every method measured in ``mode`` (bars when
    only one N was measured)."""
    found = {m: sorted((r for r in results["memory"] if r["method"] == m and r["mode"] == mode
                        and r["extra_bytes"] is not None), key=lambda r: r["n"]) for m in METHODS}
    found = {m: f for m, f in found.items() if f}
    lengths = sorted({r["n"] for f in found.values() for r in f})
    title = "forward" if mode == "fwd" else "forward + backward"
    if len(lengths) == 1:  # one N: a bar per method, its value written on it
        names = list(found)
        values = [found[m][-1]["extra_bytes"] / 2**20 for m in names]
        bars = ax.barh([METHODS[m] for m in names], values, color=[COLORS[m] for m in names])
        ax.bar_label(bars, [f"{v:,.0f} MiB" for v in values], padding=3, fontsize=8)
        ax.set_xlim(0, max(values) * 1.3)
        ax.invert_yaxis()
        ax.set_xlabel("extra memory (MiB)")
        ax.set_title(f"{title}, N = {lengths[0]}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        return
    for i, (method, rows_) in enumerate(found.items()):
        shift = 2 ** (0.08 * (i - (len(found) - 1) / 2))  # nudge each method sideways: equal values stay visible
        last = rows_[-1]
        ax.plot([r["n"] * shift for r in rows_], [r["extra_bytes"] / 2**20 for r in rows_], marker=MARKERS[method],
                color=COLORS[method], markersize=11 if method == "triton" else 7,
                linestyle="-" if method == "triton" else "--", lw=2 if method == "triton" else 1.2,
                label=f"{METHODS[method]}: {last['extra_bytes'] / 2**20:,.0f} MiB at N={last['n']}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N (tokens; points nudged sideways)")
    ax.set_ylabel("extra memory (MiB, log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)


def plot_memory(results: dict, ax=None):
    """Extra GPU memory against N (head_dim 128, not causal), log-log: forward and forward + backward panels.

    Methods whose memory is equal (SDPA-flash, cuDNN and this kernel's forward) are drawn with distinct markers,
    nudged sideways, and each legend entry gives the value at the largest N. With ``ax`` given, only the forward
    panel is drawn there. Returns the forward panel's axes.
    """
    import matplotlib.pyplot as plt

    if ax is not None:
        _memory_panel(results, "fwd", ax)
        return ax
    modes = [m for m in ("fwd", "fwd_bwd") if any(r["mode"] == m for r in results["memory"])]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 5.2), squeeze=False)
    for panel, mode in zip(axes[0], modes):
        _memory_panel(results, mode, panel)
    fig.suptitle(f"Memory beyond the inputs, D={results['memory_head_dim']}, B·N = {results['tokens']} tokens "
                 f"({results['environment']['card']})", fontsize=11)
    fig.tight_layout()
    return axes[0][0]


def plot_steps(results: dict, axes=None):
    """Forward TFLOP/s of the chapter's four kernel steps against N, causal and not (head_dim 128).

    Without ``axes`` the figure gets one more, empty column on the right for the legend, so it covers no line."""
    import matplotlib.pyplot as plt

    panels = sorted({r["causal"] for r in results["steps"]})
    legend_ax = None
    if axes is None:
        fig, grid = plt.subplots(1, len(panels) + 1, figsize=(5.2 * len(panels) + 3.2, 4),
                                 gridspec_kw={"width_ratios": [1] * len(panels) + [0.62]})
        axes, legend_ax = list(grid[:-1]), grid[-1]
    for ax, causal in zip(axes, panels):
        for step, label in STEPS.items():
            found = sorted((r for r in results["steps"] if r["step"] == step and r["causal"] == causal
                            and r["tflops"]), key=lambda r: r["n"])
            if found:
                ax.plot([r["n"] for r in found], [r["tflops"] for r in found], "o-", label=label)
        flash = sorted(rows(results, head_dim=results["steps_head_dim"], causal=causal, mode="fwd",
                            method="sdpa_flash"), key=lambda r: r["n"])
        if flash:
            ax.plot([r["n"] for r in flash], [r["tflops"] for r in flash], "k--", label="PyTorch SDPA, flash")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length N (tokens)")
        ax.set_ylabel("forward TFLOP/s")
        ax.set_title(f"Building the kernel, D={results['steps_head_dim']}{', causal' if causal else ''}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if legend_ax is not None:
        legend_ax.axis("off")
        legend_ax.legend(handles, labels, fontsize=8, loc="center left", frameon=False)
        legend_ax.figure.tight_layout()
    else:
        axes[0].legend(fontsize=8)
    return axes


# ---------------------------------------------------------------------- the Hopper fast path, step by step
HOPPER_STEPS = {  # flash_hopper.json's methods, in the order the steps are taken
    "triton": "teaching kernel (pointer loads, autotuned)",
    "hopper_tma_fixed": "(a) TMA, teaching's tile 128×64",
    "hopper_tma": "(a+c) TMA, Hopper configs",
    "hopper_persistent": "(a+c+b) + persistent grid",
    "gluon_pipelined": "(d) Gluon: async wgmma, softmax beside P·V",
    "gluon_ws": "(e) Gluon + warp specialisation (default)",
    "sdpa_cudnn": "PyTorch SDPA, cuDNN backend",
    "sdpa_flash": "PyTorch SDPA, flash backend",
    "flex": "PyTorch FlexAttention",
}
HOPPER_STYLES = {"triton": ("tab:red", "*"), "hopper_tma_fixed": ("tab:pink", "v"), "hopper_tma": ("tab:olive", "s"),
                 "hopper_persistent": ("tab:gray", "P"), "gluon_pipelined": ("tab:cyan", "x"),
                 "gluon_ws": ("black", "X"), "sdpa_cudnn": ("tab:green", "^"), "sdpa_flash": ("tab:orange", "o"),
                 "flex": ("tab:purple", "D")}
# (method, the method it is compared with, label): each step against the one before it, then the whole path
HOPPER_COMPARISONS = [
    ("hopper_tma_fixed", "triton", "(a) TMA"), ("hopper_tma", "hopper_tma_fixed", "(c) Hopper configs"),
    ("hopper_persistent", "hopper_tma", "(b) persistent"), ("gluon_pipelined", "triton", "(d) Gluon pipelined"),
    ("gluon_ws", "gluon_pipelined", "(e) warp-specialised"), ("gluon_ws", "triton", "all steps"),
    ("gluon_ws", "sdpa_cudnn", "fast path / cuDNN"), ("gluon_ws", "flex", "fast path / Flex")]


def forward_tflops(results: dict, method: str, head_dim: int, n: int, causal: bool) -> float | None:
    """The forward TFLOP/s of ``method`` at one shape (None if it was not measured there)."""
    found = rows(results, method=method, head_dim=head_dim, n=n, causal=causal)
    return found[0]["tflops"] if found else None


def hopper_step_ratios(results: dict) -> list[str]:
    """One line per comparison of :data:`HOPPER_COMPARISONS` and panel (head_dim, causal): the ratio at each N."""
    lines = []
    panels = sorted({(r["head_dim"], r["causal"]) for r in results["rows"]})
    for method, baseline, label in HOPPER_COMPARISONS:
        for head_dim, causal in panels:
            parts = []
            for n in sorted({r["n"] for r in results["rows"]}):
                a = forward_tflops(results, method, head_dim, n, causal)
                b = forward_tflops(results, baseline, head_dim, n, causal)
                if a and b:
                    parts.append(f"N={n // 1024}k {a / b:.2f}×")
            if parts:
                lines.append(f"{label:>18}, D={head_dim:<3} {'causal' if causal else 'full  '}: " + ", ".join(parts))
    return lines


def hopper_table(results: dict) -> str:
    """Forward TFLOP/s of every measured method (columns) at every shape (rows)."""
    names = [m for m in HOPPER_STEPS if rows(results, method=m)]
    lines = [f"{'D':>4} {'causal':>6} {'N':>6} " + " ".join(f"{m[:12]:>12}" for m in names)]
    for head_dim, causal, n in sorted({(r["head_dim"], r["causal"], r["n"]) for r in results["rows"]}):
        cells = [forward_tflops(results, m, head_dim, n, causal) for m in names]
        lines.append(f"{head_dim:>4} {str(causal):>6} {n:>6} " +
                     " ".join(f"{c:>12.0f}" if c else f"{'—':>12}" for c in cells))
    return "\n".join(lines)


def plot_hopper_steps(results: dict):
    """TFLOP/s against N of every method, one panel per (head_dim, causal); returns the figure."""
    import matplotlib.pyplot as plt

    panels = sorted({(r["head_dim"], r["causal"]) for r in results["rows"]})
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0 * len(panels), 12.0), 5.6), squeeze=False)
    for ax, (head_dim, causal) in zip(axes[0], panels):
        for method, label in HOPPER_STEPS.items():
            found = sorted((r for r in rows(results, method=method, head_dim=head_dim, causal=causal) if r["tflops"]),
                           key=lambda r: r["n"])
            if found:
                color, marker = HOPPER_STYLES[method]
                ax.plot([r["n"] for r in found], [r["tflops"] for r in found], marker=marker, color=color,
                        label=label, lw=2.5 if method == "gluon_ws" else 1.5)
        ax.set_xscale("log", base=2)
        lengths = sorted({r["n"] for r in results["rows"]})
        ax.set_xticks(lengths, [f"{n // 1024}k" for n in lengths])
        ax.set_title(f"forward, D={head_dim}{', causal' if causal else ''}", fontsize=11)
        ax.set_xlabel("sequence length N (tokens)")
        ax.set_ylabel("TFLOP/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    env = results["environment"]
    fig.suptitle(f"What each Hopper step buys: attention forward on {env['card']}\n({results['dtype']}, "
                 f"B·N = {results['tokens']} tokens, H·D = {results['hidden']}; median of {results['runs']} runs; "
                 f"torch {env['torch']}, triton {env['triton']})", fontsize=11)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    return fig


def fast_path_shapes(results: dict) -> tuple[list[tuple[int, int, bool]], list[tuple[int, int, bool]]]:
    """The (head_dim, n, causal) shapes of a step run split in two: where the library takes the warp-specialised
    forward (:func:`attention_lab.flash.gluon_attention.faster_than_teaching`) and where it runs the teaching kernel."""
    from attention_lab.flash.gluon_attention import faster_than_teaching

    shapes = sorted({(r["head_dim"], r["n"], r["causal"]) for r in results["rows"]})
    taken = [shape for shape in shapes if faster_than_teaching(shape[0], shape[1])]
    return taken, [shape for shape in shapes if shape not in taken]


def hopper_claims(results: dict) -> dict[str, bool]:
    """What chapter 10 says of the committed step run, as statements that hold or not (tested against the file).

    "Where the library takes it" is :func:`fast_path_shapes`: every shape but D=64 with 1k keys, where the fourth
    statement says why not (it is False for a run without that shape)."""
    shapes = sorted({(r["head_dim"], r["n"], r["causal"]) for r in results["rows"]})
    ours = [m for m in HOPPER_STEPS if m not in ("sdpa_cudnn", "sdpa_flash", "flex")]

    def ratio(method, baseline, shape):
        a, b = forward_tflops(results, method, *shape), forward_tflops(results, baseline, *shape)
        return a / b if a and b else None

    long = [shape for shape in shapes if shape[1] >= 4096]
    taken, short_d64 = fast_path_shapes(results)
    return {
        "(e) warp-specialised is the fastest of this book's kernels at every N >= 4k": bool(long) and all(
            forward_tflops(results, "gluon_ws", *shape) == max(forward_tflops(results, m, *shape) or 0 for m in ours)
            for shape in long),
        "(e) is at least 0.95x cuDNN at D=128, N >= 4k": any(shape[0] == 128 for shape in long) and all(
            ratio("gluon_ws", "sdpa_cudnn", shape) >= 0.95 for shape in long if shape[0] == 128),
        "(e) is at least FlexAttention's speed wherever the library takes it": bool(taken) and all(
            ratio("gluon_ws", "flex", shape) >= 1.0 for shape in taken),
        "at D=64 with 1k keys (e) is slower than the teaching kernel, which the library runs there":
            bool(short_d64) and all(ratio("gluon_ws", "triton", shape) < 1 for shape in short_d64),
        "(d) pipelining alone gains less than half of what (e) gains over the teaching kernel, at every shape": all(
            ratio("gluon_pipelined", "triton", shape) - 1 < 0.5 * (ratio("gluon_ws", "triton", shape) - 1)
            for shape in shapes),
        "(b) the persistent grid is slower than one program per tile at every shape": all(
            ratio("hopper_persistent", "hopper_tma", shape) < 1 for shape in shapes),
    }


def library_choice(results: dict, head_dim: int, n: int, causal: bool, mode: str) -> dict | None:
    """The row of what ``flash_attention`` runs today at this shape, in a run that measured the library's choice at
    the time (``triton``) and the teaching kernels alone (``triton_teaching``): where the library runs only teaching
    kernels — the forward at D=64 with few keys (:func:`attention_lab.flash.gluon_attention.faster_than_teaching`),
    and forward+backward there when causal too (:func:`attention_lab.flash.gluon_backward.faster_than_teaching`) —
    that row is its row."""
    from attention_lab.flash import gluon_backward
    from attention_lab.flash.gluon_attention import faster_than_teaching

    gluon = faster_than_teaching(head_dim, n) or mode == "fwd_bwd" and any(
        gluon_backward.faster_than_teaching(kernel, head_dim, n, causal) for kernel in ("dkdv", "dq"))
    method = "triton" if gluon else "triton_teaching"
    found = rows(results, head_dim=head_dim, n=n, causal=causal, mode=mode, method=method) or \
        rows(results, head_dim=head_dim, n=n, causal=causal, mode=mode, method="triton")
    return found[0] if found and found[0]["tflops"] else None


def choice_ratios(results: dict, mode: str, baseline: str, teaching: bool = False, where=None) -> list[float]:
    """Speed over ``baseline``'s at every shape (``where(head_dim, n, causal)`` true, default all) of what the library
    runs today (:func:`library_choice`), or with ``teaching`` of the teaching kernels alone (``triton_teaching``)."""
    out = []
    for d, n, c in sorted({(r["head_dim"], r["n"], r["causal"]) for r in results["rows"]}):
        if where is not None and not where(d, n, c):
            continue
        found = rows(results, head_dim=d, n=n, causal=c, mode=mode, method="triton_teaching")
        ours = (found or [None])[0] if teaching else library_choice(results, d, n, c, mode)
        base = rows(results, head_dim=d, n=n, causal=c, mode=mode, method=baseline)
        if ours and ours["tflops"] and base and base[0]["tflops"]:
            out.append(ours["tflops"] / base[0]["tflops"])
    return out


def flex_reading(results: dict) -> tuple[list[str], dict[str, bool]]:
    """Chapter 10's reading of ``flash_flex.json`` (``benchmarks/flex.py``): printed lines — per mode and head dim,
    the library's choice and the teaching kernels alone over FlexAttention and cuDNN across every N, causal and not
    — and the statements its prose relies on (tested against the file)."""
    shapes = sorted({(r["head_dim"], r["n"], r["causal"]) for r in results["rows"]})

    def ratios(mode, baseline, teaching=False, where=None):
        return choice_ratios(results, mode, baseline, teaching, where)

    lines = []
    for mode in ("fwd", "fwd_bwd"):
        for d in sorted({s[0] for s in shapes}):
            at_d = lambda h, n, c, d=d: h == d  # noqa: E731
            lib, teach = ratios(mode, "flex", where=at_d), ratios(mode, "flex", True, at_d)
            cudnn = ratios(mode, "sdpa_cudnn", where=at_d)
            if lib:
                lines.append(f"{'forward' if mode == 'fwd' else 'fwd+bwd'} D={d:3}, N 1k–16k: library / Flex "
                             f"{min(lib):.2f}–{max(lib):.2f}×, teaching kernels alone / Flex {min(teach):.2f}–"
                             f"{max(teach):.2f}×, library / cuDNN {min(cudnn):.2f}–{max(cudnn):.2f}×")
    long_128 = lambda d, n, c: d == 128 and n >= 4096  # noqa: E731
    claims = {
        "the library's forward is at least FlexAttention's speed at every shape":
            min(ratios("fwd", "flex")) >= 1.0,
        "the library's forward+backward is ahead of FlexAttention at every shape":
            min(ratios("fwd_bwd", "flex")) > 1.0,
        "the library's forward is at least 0.95x cuDNN at D=128, N >= 4k":
            min(ratios("fwd", "sdpa_cudnn", where=long_128)) >= 0.95,
        "the library's forward+backward is behind cuDNN at every shape":
            max(ratios("fwd_bwd", "sdpa_cudnn")) < 1.0,
        "the library's forward+backward is at least 0.9x cuDNN at D=128, N >= 4k":
            min(ratios("fwd_bwd", "sdpa_cudnn", where=long_128)) >= 0.9,
        "the Hopper path's forward+backward is faster than the teaching kernels' at every shape": all(
            a >= b for a, b in zip(ratios("fwd_bwd", "flex"), ratios("fwd_bwd", "flex", True))),
    }
    return lines, claims


def gluon_backward_lines(probe: dict) -> list[str]:
    """The Gluon dK/dV and dQ kernels' speed-ups over the teaching ones, and the whole backward's (delta, dK/dV, dQ),
    from ``flash_gluon_backward_probe.json`` (``benchmarks/gluon_backward_probe.py``, one process on an H100/H200)."""
    lines = []
    for row in probe["timing"]:
        q_tile = "gluon_q_{BLOCK_N}x{NUM_STAGES}".format(**row["default_q_tile"])
        lines.append(f"B={row['B']} H={row['H']} N={row['N']:5} D={row['D']} {'causal' if row['causal'] else 'full  '}: "
                     f"dK/dV {row['teaching_kv']['ms']:.2f} → {row['gluon_kv']['ms']:.2f} ms (×{row['kv_speedup']:.2f}), "
                     f"dQ {row['teaching_q']['ms']:.2f} → {row[q_tile]['ms']:.2f} ms (×{row['q_speedup']:.2f}); "
                     f"whole backward {row['teaching_backward']['ms']:.2f} → {row['gluon_backward']['ms']:.2f} ms "
                     f"(×{row['backward_speedup']:.2f})")
    return lines


def fused_delta_reading(probe: dict) -> tuple[str, dict[str, bool]]:
    """The probe's measurement of delta = rowsum(dO ∘ O) computed in the Gluon dQ kernel's prologue
    (``FUSED_DELTA_BACKWARD``: one launch fewer, dQ before dK/dV) against the delta kernel, as whole-backward time
    ratios (> 1: the fused variant is faster), and the statements chapter 10 makes about it."""
    rows = [r for r in probe["timing"] if "fused_delta_speedup" in r]
    if not rows:
        raise ValueError("the probe has no fused-delta timing: run benchmarks/gluon_backward_probe.py again")
    ratios = [r["fused_delta_speedup"] for r in rows]
    line = "delta in the dQ kernel's prologue, whole backward: " + ", ".join(
        f"N={r['N']} {'causal' if r['causal'] else 'full'} ×{r['fused_delta_speedup']:.2f}" for r in rows)
    claims = {
        "it changes the backward by less than 5 % either way": all(0.95 < x < 1.05 for x in ratios),
        "it is slower at one shape at least": min(ratios) < 1.0,
    }
    return line, claims


def gqa_training_reading(results: dict) -> tuple[list[str], dict[str, bool]]:
    """Chapter 10's reading of ``gqa_training.json`` (``benchmarks/gqa_training.py``: H=16 query heads of
    D=128 over 16 / 4 / 1 kv heads, causal, bf16, at B=8 and B=1 with N=4k): per (batch, kv heads), forward+backward
    of the library (``triton``) over cuDNN's and FlexAttention's, timed eagerly and replayed from a CUDA graph (the
    GPU's time alone), and the statements the chapter's prose relies on (tested against the file)."""
    def one(batch, n_kv_heads, method):
        found = rows(results, batch=batch, n_kv_heads=n_kv_heads, mode="fwd_bwd", method=method)
        return found[0] if found else None

    needed = ("triton", "triton_unsplit", "sdpa_cudnn_gqa", "flex")
    missing = sorted({(r["batch"], r["n_kv_heads"], r["method"]) for r in results["rows"]
                      if r["mode"] == "fwd_bwd" and r["method"] in needed and not r.get("graph_ms")})
    if missing:
        raise ValueError(f"gqa_training results without CUDA-graph times for (batch, kv heads, method) {missing[:4]}: "
                         f"run benchmarks/gqa_training.py without --no-graphs")

    keys = sorted({(r["batch"], r["n_kv_heads"]) for r in results["rows"]}, key=lambda k: (-k[0], -k[1]))
    lines, graph_cudnn, graph_flex, eager_over_graph, small_over_large, split_gain = [], [], [], [], [], []
    for batch, n_kv_heads in keys:
        ours, cudnn, flex = (one(batch, n_kv_heads, m) for m in ("triton", "sdpa_cudnn_gqa", "flex"))
        graph = ours["graph_ms"]
        graph_cudnn.append(cudnn["graph_ms"] / graph)
        graph_flex.append(flex["graph_ms"] / graph)
        eager_over_graph.append((batch, ours["ms"] / graph))
        group = results["heads"] // n_kv_heads
        lines.append(f"B={batch} Hkv={n_kv_heads:2} (group {group:2}): library {graph:.2f} ms from a CUDA "
                     f"graph, {ours['ms']:.2f} ms eager; / cuDNN {graph_cudnn[-1]:.2f}× (graph) "
                     f"{cudnn['ms'] / ours['ms']:.2f}× (eager); / Flex {graph_flex[-1]:.2f}× (graph)")
        if batch == 1:
            large = one(8, n_kv_heads, "triton")
            small_over_large.append(ours["graph_tflops"] / large["graph_tflops"])
            if n_kv_heads < results["heads"]:  # GQA/MQA: a group to split
                split_gain.append(one(1, n_kv_heads, "triton_unsplit")["graph_ms"] / graph)
    claims = {
        "from a CUDA graph the library's forward+backward is at least 0.9x cuDNN at every batch and kv-head count":
            min(graph_cudnn) >= 0.9,
        "from a CUDA graph the library's forward+backward is ahead of FlexAttention at every batch and kv-head count":
            min(graph_flex) > 1.0,
        "on the GPU batch 1 keeps at least 80 % of batch 8's TFLOP/s at every kv-head count (no cliff)":
            min(small_over_large) >= 0.8,
        "at batch 1 the split of the query heads makes GQA/MQA's backward faster":
            min(split_gain) > 1.0,
        "at batch 1 an eager step takes at least 1.5x its GPU time (the host's launches)":
            min(ratio for batch, ratio in eager_over_graph if batch == 1) >= 1.5,
    }
    return lines, claims
