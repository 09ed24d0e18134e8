"""Compile the FlashAttention kernels for a GPU architecture on a CPU-only machine and read their shared memory.

Triton compiles ahead of time for any target: ``triton.compile(ASTSource(fn, signature, constexprs),
target=GPUTarget("cuda", 75, 32), options={"num_warps": .., "num_stages": ..})`` needs no GPU. The
compiler records the shared memory a kernel allocates (``compiled.metadata.shared``); a launch
that asks for more than the GPU has fails, so CI checks that every config kept by
:func:`attention_lab.flash.triton_configs.configs_for` fits its architecture.

Two modes:

* ``full=True``: the whole pipeline down to a cubin (ptxas), exactly what a launch would run. On a
  shared 2-core CPU this takes up to a minute per config for sm_75 (LLVM and ptxas dominate).
* ``full=False`` (default, CI): the same ``triton.compile`` call, stopped right after the
  shared-memory allocation pass, the pass that decides ``metadata.shared``; the LLVM/ptxas stages
  that follow do not change it. A second or two per config.

The kernels must be real ``JITFunction`` objects, not the interpreter's stand-ins, so when this
process runs under ``TRITON_INTERPRET=1`` (the tests on a CPU), :func:`check_in_subprocess` runs
the check in a fresh Python with the interpreter switched off.

    python -m attention_lab.kernels.compile_check              # table for sm_75, sm_80, sm_89, sm_90
    python -m attention_lab.kernels.compile_check --json --full
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CAPABILITIES = (75, 80, 89, 90)

# Pointer arguments of each kernel, by name; every other non-constexpr argument is an int32
# (strides, sizes) except the two float scales.
_POINTERS = {"Q": "io", "K": "io", "V": "io", "O": "io", "DO": "io", "DQ": "io", "DK": "io", "DV": "io",
             "LSE": "*fp32", "DELTA": "*fp32", "M": "*u8"}
_FLOATS = {"qk_scale", "scale"}


class _SharedMemoryMeasured(Exception):
    """Raised from inside the compiler once the shared-memory size is known (fast mode)."""

    def __init__(self, shared: int) -> None:
        super().__init__(shared)
        self.shared = shared


def kernels() -> dict:
    """The jitted kernels by name (as in :data:`triton_configs.CONFIGS`, plus the small delta kernel)."""
    from attention_lab.flash import triton_attention as ta

    return {"forward": ta._attn_fwd, "backward_kv": ta._attn_bwd_kv, "backward_q": ta._attn_bwd_q,
            "delta": ta._attn_bwd_delta}


def signature(fn, dtype: str, constexprs: dict) -> tuple[dict, dict]:
    """Triton signature (arg name -> type) and divisibility hints, as the JIT would see aligned tensors."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _POINTERS:
            sig[name] = f"*{dtype}" if _POINTERS[name] == "io" else _POINTERS[name]
        elif name in _FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    # torch allocations are 16-byte aligned and our strides are multiples of 16 at the sizes that matter
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if sig[name].startswith("*") or name.startswith("stride")}
    return sig, attrs


def _stop_after_shared_memory_allocation():
    """Patch the NVIDIA backend so its TritonGPU -> LLVM stage stops once shared memory is allocated."""
    from triton._C.libtriton import ir, nvidia, passes
    from triton.backends.nvidia import compiler as nvidia_compiler

    backend_class = nvidia_compiler.CUDABackend
    original = backend_class.make_llir

    def measure(self, src, metadata, options, capability):
        ptx_version = nvidia_compiler.get_ptx_version_from_options(options, self.target.arch)
        pm = ir.pass_manager(src.context)
        passes.ttgpuir.add_combine_tensor_select_and_if(pm)
        try:
            passes.ttgpuir.add_allocate_warp_groups(pm)
        except TypeError:  # newer Triton: (pm, consan: bool)
            passes.ttgpuir.add_allocate_warp_groups(pm, False)
        passes.convert.add_scf_to_cf(pm)
        passes.gluon.add_inliner(pm)
        nvidia.passes.ttgpuir.add_allocate_shared_memory_nv(pm, capability, ptx_version)
        pm.run(src, "measure_shared")
        raise _SharedMemoryMeasured(src.get_int_attr("ttg.shared"))

    backend_class.make_llir = measure
    return lambda: setattr(backend_class, "make_llir", original)


def shared_memory(kernel: str, config, capability: int, head_dim: int = 128, dtype: str = "fp16",
                  causal: bool = True, window: bool = False, full: bool = False) -> int:
    """Bytes of shared memory ``kernel`` with ``config`` (a ``triton.Config``) allocates on sm_``capability``."""
    import triton
    from triton.backends.compiler import GPUTarget

    fn = kernels()[kernel]
    if not isinstance(fn, triton.runtime.jit.JITFunction):
        raise RuntimeError("compile checks need real JITFunctions: unset TRITON_INTERPRET (see check_in_subprocess)")
    block_d = max(16, triton.next_power_of_2(head_dim))
    constexprs = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, **config.kwargs)
    if kernel != "delta":
        constexprs.update(CAUSAL=causal, HAS_WINDOW=window, HAS_MASK=False)
    sig, attrs = signature(fn, dtype, constexprs)
    source = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    target = GPUTarget("cuda", capability, 32)
    if full:
        return triton.compile(source, target=target, options=options).metadata.shared
    restore = _stop_after_shared_memory_allocation()
    try:
        compiled = triton.compile(source, target=target, options=options)
        return compiled.metadata.shared  # a cache hit from an earlier full compile
    except _SharedMemoryMeasured as measured:
        return measured.shared
    finally:
        restore()


def worst_head_dim(kernel: str, config, capability: int) -> int | None:
    """The largest padded head_dim (128, 64, 32, 16) at which the pruning rule keeps ``config``, or None."""
    from attention_lab.flash import triton_configs

    for block_d in (128, 64, 32, 16):
        if triton_configs.fits(kernel, config, block_d, 2, capability):
            return block_d
    return None


def check(capabilities=CAPABILITIES, full: bool = False) -> list[dict]:
    """Compile every kernel × config for each architecture, at the largest head_dim the pruning keeps it for.

    Shared memory grows with head_dim, so that compile is the config's worst case on that GPU.
    Configs pruned at every head_dim are listed with ``head_dim=None`` and not compiled.
    """
    import triton

    from attention_lab.flash import triton_configs

    results = []
    for capability in capabilities:
        limit = triton_configs.shared_memory_limit(capability)
        jobs = [(name, c) for name, configs in triton_configs.CONFIGS.items() for c in configs]
        jobs.append(("delta", triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=3)))
        for kernel, config in jobs:
            head_dim = 128 if kernel == "delta" else worst_head_dim(kernel, config, capability)
            row = dict(capability=capability, head_dim=head_dim, kernel=kernel, config=dict(config.kwargs),
                       num_warps=config.num_warps, num_stages=config.num_stages, limit=limit,
                       shared=None, estimate=None, fits=None, seconds=0.0)
            if head_dim is not None:
                started = time.perf_counter()
                row["shared"] = shared_memory(kernel, config, capability, head_dim, full=full)
                row["fits"] = row["shared"] <= limit
                row["seconds"] = round(time.perf_counter() - started, 2)
                if kernel != "delta":
                    row["estimate"] = triton_configs.estimated_shared_memory(kernel, config, head_dim, 2, capability)
            results.append(row)
    return results


def check_in_subprocess(capabilities=CAPABILITIES, full: bool = False, timeout: int = 900) -> list[dict]:
    """:func:`check` in a fresh Python without ``TRITON_INTERPRET`` (so the kernels are real JITFunctions)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    command = [sys.executable, "-m", "attention_lab.kernels.compile_check", "--json",
               "--capabilities", *map(str, capabilities)]
    if full:
        command.append("--full")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"compile check failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attention_lab.kernels.compile_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capabilities", type=int, nargs="+", default=list(CAPABILITIES))
    parser.add_argument("--full", action="store_true", help="compile down to cubin (slow on a small CPU)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_args(argv)
    results = check(args.capabilities, args.full)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'sm':>4} {'D':>4} {'kernel':<12} {'BLOCK_M×N':<10} {'w':>2} {'s':>2} {'shared KiB':>10} "
          f"{'estimate':>9} {'limit':>6} fits")
    for r in results:
        if r["head_dim"] is None:
            tile = "×".join(str(v) for v in r["config"].values())
            print(f"{r['capability']:>4} {'-':>4} {r['kernel']:<12} {tile:<10} {r['num_warps']:>2} {r['num_stages']:>2}"
                  f" {'pruned at every head_dim':>27}")
            continue
        tile = "×".join(str(v) for v in r["config"].values())
        estimate = "" if r["estimate"] is None else f"{r['estimate'] / 1024:.0f}"
        print(f"{r['capability']:>4} {r['head_dim']:>4} {r['kernel']:<12} {tile:<10} {r['num_warps']:>2} "
              f"{r['num_stages']:>2} {r['shared'] / 1024:>10.1f} {estimate:>9} {r['limit'] // 1024:>6} "
              f"{'yes' if r['fits'] else 'NO'}")


if __name__ == "__main__":
    main(sys.argv[1:])
