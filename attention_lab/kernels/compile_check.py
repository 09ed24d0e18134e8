"""Compile every Triton kernel of the book for a GPU architecture on a CPU-only machine; read its shared memory.

Triton compiles ahead of time for any target: ``triton.compile(ASTSource(fn, signature, constexprs),
target=GPUTarget("cuda", 75, 32), options={"num_warps": .., "num_stages": ..})`` needs no GPU. The
compiler records the shared memory a kernel allocates (``compiled.metadata.shared``); a launch that
asks for more than the GPU has fails — yet the compile itself succeeds — so CI compiles every kernel
configuration the code can choose, for sm_75, sm_80, sm_89 and sm_90, and checks that it fits.

One harness for every kernel family. Each kernel module says what it would compile on a capability
in a public ``compile_jobs(capability) -> list[CompileJob]`` beside its kernels and configs:

* ``flash`` (:mod:`attention_lab.flash.triton_attention`): every autotune config of the forward and the
  two backward kernels kept by :func:`attention_lab.flash.triton_configs.configs_for`, at the largest
  head_dim the pruning keeps it for, and the small delta kernel;
* ``flash_steps`` (:mod:`attention_lab.flash.triton_steps`): chapter 10's two teaching kernels with their tile;
* ``decode`` (:mod:`attention_lab.kernels.decode_attention`): the paged and the contiguous kernel with the
  tile :func:`~attention_lab.kernels.decode_attention.decode_config` picks, and the split-K merge;
* ``latent`` (:mod:`attention_lab.kernels.latent_decode`): MLA's latent kernel at DeepSeek-V2's sizes and
  its merge (skipped on sm_75, which the kernel refuses);
* ``hopper`` (:mod:`attention_lab.flash.hopper`): the sm_90 fast-path forward (TMA descriptors), every Hopper
  config, one program per tile and persistent — on sm_90 only, the one GPU that chooses it.

Two modes:

* ``full=True``: the whole pipeline down to a cubin (ptxas), exactly what a launch would run. On a
  shared 2-core CPU this takes up to a minute per config for sm_75 (LLVM and ptxas dominate).
* ``full=False`` (default, CI): the same ``triton.compile`` call, stopped right after the
  shared-memory allocation pass, the pass that decides ``metadata.shared``; the LLVM/ptxas stages
  that follow do not change it. A second or two per config.

:func:`registers_and_spills` compiles fully and asks ``ptxas -v`` (shipped in the triton wheel) how
many registers a kernel uses and how many bytes it spills: the check a T4's tiles need.

The kernels must be real ``JITFunction`` objects, not the interpreter's stand-ins, so when this
process runs under ``TRITON_INTERPRET=1`` (the tests on a CPU), :func:`check_in_subprocess` runs
the check in a fresh Python with the interpreter switched off.

    python -m attention_lab.kernels.compile_check                     # every family, sm_75, sm_80, sm_89, sm_90
    python -m attention_lab.kernels.compile_check --families decode latent --json
    python -m attention_lab.kernels.compile_check --json --full
    python -m attention_lab.kernels.compile_check --families decode --capabilities 75 --spills
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

CAPABILITIES = (75, 80, 89, 90)
FAMILIES = {  # family -> the module whose compile_jobs(capability) lists its kernels' configurations
    "flash": "attention_lab.flash.triton_attention",
    "flash_steps": "attention_lab.flash.triton_steps",
    "decode": "attention_lab.kernels.decode_attention",
    "latent": "attention_lab.kernels.latent_decode",
    "gluon": "attention_lab.flash.gluon_attention",
    "gluon_backward": "attention_lab.flash.gluon_backward",
    "hopper": "attention_lab.flash.hopper",
}


@dataclass(frozen=True)
class CompileJob:
    """One kernel configuration to compile for one GPU architecture (what a launch would compile)."""

    family: str  # a key of FAMILIES
    kernel: str  # which kernel of the family: "forward", "paged", "merge", ...
    fn: Any  # the @triton.jit function (a real JITFunction; None when skipped)
    constexprs: dict  # a value for every tl.constexpr argument
    types: dict  # Triton types of the arguments that are not int32: pointers ("*fp16", "*fp32", "*i32", "*u8"), "fp32"
    num_warps: int
    num_stages: int
    config: dict = field(default_factory=dict)  # the tile, as reported (e.g. {"BLOCK_M": 64, "BLOCK_N": 32})
    head_dim: int | None = None  # the width of the rows its tiles hold (head_dim; d_c for the latent kernel)
    aligned: tuple[str, ...] = ()  # integer arguments besides the strides that launches pass as multiples of 16
    estimate: int | None = None  # the code's own shared-memory estimate, checked to bound the real allocation
    skipped: str | None = None  # why nothing is compiled for this configuration on this architecture
    maxnreg: int | None = None  # a register cap per thread passed to the compiler (warp-specialised kernels)


class _SharedMemoryMeasured(Exception):
    """Raised from inside the compiler once the shared-memory size is known (fast mode)."""

    def __init__(self, shared: int) -> None:
        super().__init__(shared)
        self.shared = shared


def compile_jobs(family: str, capability: int) -> list[CompileJob]:
    """The configurations of ``family``'s kernels for sm_``capability`` (from the family's own module)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    return importlib.import_module(FAMILIES[family]).compile_jobs(capability)


def signature(job: CompileJob) -> tuple[dict, dict]:
    """Triton signature (arg name -> type) and divisibility hints, as the JIT would see aligned tensors.

    Torch allocations are 16-byte aligned and the strides are multiples of 16 at the sizes that matter,
    so pointers, ``stride*`` arguments and ``job.aligned`` get the 16-divisibility a launch would find.
    """
    sig = {name: "constexpr" if name in job.constexprs else job.types.get(name, "i32") for name in job.fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(job.fn.arg_names)
             if sig[name].startswith("*") or name.startswith("stride") or name in job.aligned}
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


def _source_and_options(job: CompileJob, capability: int):
    import triton
    from triton.backends.compiler import GPUTarget

    if not isinstance(job.fn, triton.runtime.jit.JITFunction):
        raise RuntimeError("compile checks need real JITFunctions: unset TRITON_INTERPRET (see check_in_subprocess)")
    sig, attrs = signature(job)
    source_class = triton.compiler.ASTSource
    if getattr(job.fn, "is_gluon", lambda: False)():  # a @gluon.jit kernel (its TMA descriptors typed in job.types)
        from triton.experimental.gluon._runtime import GluonASTSource as source_class
    source = source_class(fn=job.fn, signature=sig, constexprs=job.constexprs, attrs=attrs)
    options = {"num_warps": job.num_warps, "num_stages": job.num_stages}
    if job.maxnreg is not None:
        options["maxnreg"] = job.maxnreg
    return source, GPUTarget("cuda", capability, 32), options


def compile_kernel(job: CompileJob, capability: int):
    """The whole compile for sm_``capability`` down to a cubin: a ``CompiledKernel`` (``.asm``, ``.metadata``)."""
    import triton

    source, target, options = _source_and_options(job, capability)
    return triton.compile(source, target=target, options=options)


def shared_memory(job: CompileJob, capability: int, full: bool = False) -> int:
    """Bytes of shared memory ``job``'s kernel allocates on sm_``capability`` (fast mode unless ``full``)."""
    import triton

    if full:
        return compile_kernel(job, capability).metadata.shared
    source, target, options = _source_and_options(job, capability)
    restore = _stop_after_shared_memory_allocation()
    try:
        compiled = triton.compile(source, target=target, options=options)
        return compiled.metadata.shared  # a cache hit from an earlier full compile
    except _SharedMemoryMeasured as measured:
        return measured.shared
    finally:
        restore()


def registers_and_spills(job: CompileJob, capability: int, compiled=None) -> dict:
    """Registers per thread and bytes spilled to local memory, as ``ptxas -v`` reports them for sm_``capability``.

    A full compile (slow on a small CPU; pass ``compiled``, a :func:`compile_kernel` result, to reuse one),
    then the triton wheel's own ptxas on the PTX. Returns ``{"registers": .., "spill_stores": ..,
    "spill_loads": ..}``.
    """
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptx = (compiled if compiled is not None else compile_kernel(job, capability)).asm["ptx"]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as file:
            file.write(ptx)
        done = subprocess.run([get_ptxas(capability).path, "-v", f"--gpu-name={sm_arch_from_capability(capability)}",
                               path, "-o", os.path.join(folder, "kernel.cubin")], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed for {job.family}/{job.kernel} on sm_{capability}:\n{done.stderr[-2000:]}")
    log = done.stdout + done.stderr
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"registers": int(registers.group(1)) if registers else None,
            "spill_stores": int(spills.group(1)) if spills else 0,
            "spill_loads": int(spills.group(2)) if spills else 0}


def check(families=tuple(FAMILIES), capabilities=CAPABILITIES, full: bool = False,
          spills: bool = False) -> list[dict]:
    """Compile every configuration of each family for each architecture; one row per configuration.

    A row: family, kernel, capability, config (the tile), head_dim, num_warps, num_stages, shared (bytes
    allocated), limit (bytes the architecture allows a block), fits, estimate (the code's own, or None),
    seconds, skipped (why not compiled, else None; then shared and fits are None). With ``spills`` every
    configuration is compiled fully and its row also has registers, spill_stores and spill_loads
    (:func:`registers_and_spills`).
    """
    from attention_lab.kernels.common import shared_memory_limit

    results = []
    for capability in capabilities:
        limit = shared_memory_limit(capability)
        for family in families:
            for job in compile_jobs(family, capability):
                row = dict(family=job.family, kernel=job.kernel, capability=capability, config=dict(job.config),
                           head_dim=job.head_dim, num_warps=job.num_warps, num_stages=job.num_stages,
                           shared=None, limit=limit, fits=None, estimate=job.estimate, seconds=0.0,
                           skipped=job.skipped)
                if job.skipped is None:
                    started = time.perf_counter()
                    if spills:
                        compiled = compile_kernel(job, capability)
                        row["shared"] = compiled.metadata.shared
                        row.update(registers_and_spills(job, capability, compiled))
                    else:
                        row["shared"] = shared_memory(job, capability, full=full)
                    row["fits"] = row["shared"] <= limit
                    row["seconds"] = round(time.perf_counter() - started, 2)
                results.append(row)
    return results


def check_in_subprocess(families=tuple(FAMILIES), capabilities=CAPABILITIES, full: bool = False,
                        spills: bool = False, timeout: int = 900) -> list[dict]:
    """:func:`check` in a fresh Python without ``TRITON_INTERPRET`` (so the kernels are real JITFunctions)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    command = [sys.executable, "-m", "attention_lab.kernels.compile_check", "--json",
               "--families", *families, "--capabilities", *map(str, capabilities)]
    if full:
        command.append("--full")
    if spills:
        command.append("--spills")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"compile check failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attention_lab.kernels.compile_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--capabilities", type=int, nargs="+", default=list(CAPABILITIES))
    parser.add_argument("--full", action="store_true", help="compile down to cubin (slow on a small CPU)")
    parser.add_argument("--spills", action="store_true", help="also registers and spills from ptxas -v (full compiles)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_args(argv)
    results = check(args.families, args.capabilities, args.full, args.spills)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'sm':>4} {'family':<7} {'kernel':<12} {'D':>4} {'tile':<14} {'w':>2} {'s':>2} {'shared KiB':>10} "
          f"{'estimate':>9} {'limit':>6} fits")
    for r in results:
        tile = "×".join(str(v) for v in r["config"].values())
        head = "-" if r["head_dim"] is None else r["head_dim"]
        start = (f"{r['capability']:>4} {r['family']:<7} {r['kernel']:<12} {head:>4} {tile:<14} {r['num_warps']:>2} "
                 f"{r['num_stages']:>2}")
        if r["skipped"] is not None:
            print(f"{start} skipped: {r['skipped']}")
            continue
        estimate = "" if r["estimate"] is None else f"{r['estimate'] / 1024:.0f}"
        spilled = "" if "registers" not in r else f"  {r['registers']} registers, {r['spill_stores']} B spilled"
        print(f"{start} {r['shared'] / 1024:>10.1f} {estimate:>9} {r['limit'] // 1024:>6} "
              f"{'yes' if r['fits'] else 'NO'}{spilled}")


if __name__ == "__main__":
    main(sys.argv[1:])
