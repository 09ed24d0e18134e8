"""On a T4 (sm_75) no kernel configuration the code can choose spills registers to local memory.

On sm_75 Triton (3.2 and later) runs ``tl.dot`` on the FMA units, and each thread keeps its rows of both
operands of a product in registers (at most 255 per thread): a tile too big for that spills to local
memory, which is slow and says the tile is wrong for the GPU. So this test compiles, for sm_75 on the CPU,
every configuration a T4 can get and asks ``ptxas -v`` (shipped in the triton wheel,
:func:`attention_lab.kernels.compile_check.registers_and_spills`) how many bytes each spills, and reads the
stack frame of the cubin Triton built (``cuobjdump -res-usage``); any spilled byte, or any stack, fails:

* flash (forward, dK/dV, dQ): every config :func:`~attention_lab.flash.triton_configs.configs_for` keeps on
  sm_75, at every padded head_dim (16, 32, 64, 128) in fp16 and fp32, with the options a launch passes
  (``maxnreg``), in the kernels' largest variant (causal, a window, an explicit mask and 64-bit offsets: the
  most code, so the most registers — every variant, and head dims that are not powers of two, were checked
  with the same tool when the tiles were chosen); and the delta kernel;
* flash_steps: chapter 10's two teaching kernels with ``step_tile(75)`` (:data:`SMALL_TILE`), causal, and the
  library forward with that tile (step 3), at every head_dim, fp16 and fp32;
* decode: the paged and the contiguous kernel with ``decode_config(head_dim, element_size, 75)`` at every
  head_dim, fp16 and fp32, for query groups padded to 16, 32 and 64 rows; and the split-K merge;
* latent: the kernel refuses sm_75 (nothing to compile).

And no two configurations a T4 can get differ only in ``num_stages``: nothing is pipelined on sm_75, so
they would be the same compiled code, compiled and timed twice.

The compiles run in a fresh Python without ``TRITON_INTERPRET`` (the kernels must be real JITFunctions),
two at a time; ``python tests/test_ch10_t4_spills.py`` prints the table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

HEAD_DIMS = (16, 32, 64, 128)  # the padded head dims (BLOCK_D) the pruning rule is asked about on sm_75
DTYPES = {2: "fp16", 4: "fp32"}
GROUP_PADS = (16, 32, 64)  # decode: query heads per kv head, padded for tl.dot (MHA/GQA up to MQA with 64 heads)
T4 = 75


# ---------------------------------------------------------------------- what a T4 can get (plain Python)
def _retyped(types: dict, element_bytes: int) -> dict:
    """The job's argument types with its 16-bit tensors in the given element size (fp32 for 4)."""
    return {name: ("*fp32" if kind == "*fp16" and element_bytes == 4 else kind) for name, kind in types.items()}


def _template(jobs, kernel):
    return next(job for job in jobs if job.kernel == kernel)


def t4_jobs() -> list[tuple]:
    """Every (job, maxnreg) a T4 can run, as :class:`~attention_lab.kernels.compile_check.CompileJob` rows."""
    import triton

    from attention_lab.flash import triton_attention, triton_configs, triton_steps
    from attention_lab.kernels import decode_attention, latent_decode
    from attention_lab.kernels.common import dot_precision

    import torch

    jobs = []
    flash = [j for j in triton_attention.compile_jobs(T4) if j.skipped is None]
    for kernel in triton_configs.CONFIGS:
        template = _template(flash, kernel)
        for block_d in HEAD_DIMS:
            for element_bytes, dtype in DTYPES.items():
                for config in triton_configs.configs_for(kernel, block_d, element_bytes, T4, has_mask=True):
                    constexprs = dict(template.constexprs, HEAD_DIM=block_d, BLOCK_D=block_d, CAUSAL=True,
                                      HAS_WINDOW=True, HAS_MASK=True, **config.kwargs)
                    if "WIDE" in constexprs:
                        constexprs["WIDE"] = True
                    estimate = triton_configs.estimated_shared_memory(kernel, config, block_d, element_bytes, T4, True)
                    job = dataclasses.replace(template, constexprs=constexprs,
                                              types=_retyped(template.types, element_bytes),
                                              num_warps=config.num_warps, num_stages=config.num_stages,
                                              config=dict(config.kwargs, dtype=dtype), head_dim=block_d,
                                              estimate=estimate)
                    jobs.append((job, config.maxnreg))
    delta = _template(flash, "delta")
    for element_bytes, dtype in DTYPES.items():
        jobs.append((dataclasses.replace(delta, types=_retyped(delta.types, element_bytes),
                                         config=dict(delta.config, dtype=dtype)), None))

    steps = triton_steps.compile_jobs(T4)
    tile = triton_steps.step_tile(T4)
    forward = _template(flash, "forward")
    for block_d in HEAD_DIMS:
        for element_bytes, dtype in DTYPES.items():
            for template in steps:
                constexprs = dict(template.constexprs, HEAD_DIM=block_d, BLOCK_D=block_d)
                jobs.append((dataclasses.replace(template, constexprs=constexprs, head_dim=block_d,
                                                 types=_retyped(template.types, element_bytes),
                                                 config=dict(template.config, dtype=dtype)), None))
            # step 3 runs the library forward with the same fixed tile (a fixed tile passes no maxnreg)
            constexprs = dict(forward.constexprs, HEAD_DIM=block_d, BLOCK_D=block_d, CAUSAL=True, HAS_WINDOW=False,
                              HAS_MASK=False, BLOCK_M=tile["BLOCK_M"], BLOCK_N=tile["BLOCK_N"])
            jobs.append((dataclasses.replace(forward, family="flash_steps", kernel="skip", constexprs=constexprs,
                                             types=_retyped(forward.types, element_bytes), head_dim=block_d,
                                             num_warps=tile["num_warps"], num_stages=tile["num_stages"], estimate=None,
                                             config={"BLOCK_M": tile["BLOCK_M"], "BLOCK_N": tile["BLOCK_N"],
                                                     "dtype": dtype}), None))

    decode = decode_attention.compile_jobs(T4)
    for kernel in ("paged", "contiguous"):
        template = _template(decode, kernel)
        for block_d in HEAD_DIMS:
            for element_bytes, dtype in DTYPES.items():
                config = decode_attention.decode_config(block_d, element_bytes, T4)
                precision = dot_precision(torch.float32 if element_bytes == 4 else torch.float16)
                for group_pad in GROUP_PADS:
                    constexprs = dict(template.constexprs, GROUP=group_pad, GROUP_PAD=group_pad, HEAD_DIM=block_d,
                                      HEAD_DIM_PAD=block_d, TILE_N=config.tile_n, DOT_PRECISION=precision)
                    jobs.append((dataclasses.replace(template, constexprs=constexprs, head_dim=block_d,
                                                     types=_retyped(template.types, element_bytes),
                                                     num_warps=config.num_warps, num_stages=config.num_stages,
                                                     config={"TILE_N": config.tile_n, "GROUP_PAD": group_pad,
                                                             "dtype": dtype}), None))
    merge = _template(decode, "merge")
    for element_bytes, dtype in DTYPES.items():
        jobs.append((dataclasses.replace(merge, types=_retyped(merge.types, element_bytes),
                                         config=dict(merge.config, dtype=dtype)), None))
    assert all(job.skipped is not None for job in latent_decode.compile_jobs(T4))  # the latent kernel refuses sm_75
    assert triton.next_power_of_2(max(HEAD_DIMS)) == triton_attention.MAX_HEAD_DIM
    return jobs


# ---------------------------------------------------------------------- one compile (in a worker process)
def _stack_frame(cubin: bytes) -> int | None:
    """Bytes of stack frame in a cubin (``cuobjdump -res-usage``, shipped beside ptxas), or None without it."""
    import re
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    tool = os.path.join(os.path.dirname(get_ptxas(T4).path), "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        done = subprocess.run([tool, "-res-usage", file.name], capture_output=True, text=True)
    found = re.findall(r"STACK:(\d+)", done.stdout)
    return max(map(int, found)) if done.returncode == 0 and found else None


def _measure(index: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    from attention_lab.kernels import compile_check
    from attention_lab.kernels.common import shared_memory_limit

    job, maxnreg = t4_jobs()[index]
    signature, attrs = compile_check.signature(job)
    options = {"num_warps": job.num_warps, "num_stages": job.num_stages}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg  # what the autotuner passes for this config
    source = triton.compiler.ASTSource(fn=job.fn, signature=signature, constexprs=job.constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", T4, 32), options=options)
    row = dict(family=job.family, kernel=job.kernel, config=job.config, head_dim=job.head_dim,
               num_warps=job.num_warps, num_stages=job.num_stages, maxnreg=maxnreg,
               shared=compiled.metadata.shared, limit=shared_memory_limit(T4), estimate=job.estimate)
    row.update(compile_check.registers_and_spills(job, T4, compiled))
    row["stack"] = _stack_frame(compiled.asm["cubin"])
    return row


def measure_all(workers: int = 2) -> list[dict]:
    """Registers, spills, stack and shared memory of every T4 job, ``workers`` compiles at a time."""
    from concurrent.futures import ProcessPoolExecutor

    count = len(t4_jobs())
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_measure, range(count)))


# ---------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def measured() -> list[dict]:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, __file__, "--json"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_t4_configuration_spills(measured):
    spilled = [r for r in measured if r["spill_stores"] or r["spill_loads"] or r["stack"]]
    assert not spilled, "configurations that spill on sm_75 (ptxas -v):\n" + "\n".join(map(str, spilled))
    assert all(0 < r["registers"] <= 255 for r in measured)


def test_every_t4_configuration_was_compiled_and_fits(measured):
    from attention_lab.flash import triton_configs

    families = {(r["family"], r["kernel"]) for r in measured}
    assert families == ({("flash", k) for k in (*triton_configs.CONFIGS, "delta")}
                        | {("flash_steps", k) for k in ("two_pass", "online", "skip")}
                        | {("decode", k) for k in ("paged", "contiguous", "merge")})
    flash = {(r["kernel"], r["head_dim"], r["config"]["dtype"]) for r in measured if r["family"] == "flash"}
    assert flash >= {(k, d, t) for k in triton_configs.CONFIGS for d in HEAD_DIMS for t in DTYPES.values()}
    too_big = [r for r in measured if r["shared"] > r["limit"]]
    assert not too_big, too_big
    # the pruning rule's estimate bounds what the compiler allocates, fp32 included
    assert all(r["shared"] <= r["estimate"] for r in measured if r["estimate"] is not None)


def test_no_two_t4_configurations_differ_only_in_num_stages():
    """On sm_75 nothing is pipelined: configs that differ only in num_stages are the same code, compiled twice."""
    from attention_lab.flash import triton_configs
    from attention_lab.kernels import decode_attention

    for kernel in triton_configs.CONFIGS:
        t4 = {}  # every config a T4 can get for this kernel, by its launch without the stage count
        for block_d in HEAD_DIMS:
            for element_bytes in DTYPES:
                for has_mask in (False, True):
                    kept = triton_configs.configs_for(kernel, block_d, element_bytes, T4, has_mask)
                    assert len(kept) == 1, (kernel, block_d, element_bytes, has_mask, kept)  # one tile, no timing
                    for c in kept:
                        launch = (tuple(sorted(c.kwargs.items())), c.num_warps, c.maxnreg)
                        t4.setdefault(launch, set()).add(c.num_stages)
        assert all(stages == {1} for stages in t4.values()), (kernel, t4)
        in_list = [c for c in triton_configs.CONFIGS[kernel] if c.num_stages == 1]  # the T4 tiles the autotuner holds
        assert len({(tuple(sorted(c.kwargs.items())), c.num_warps) for c in in_list}) == len(in_list) == len(t4)
    decode = {decode_attention.decode_config(d, e, T4) for d in HEAD_DIMS for e in DTYPES}
    assert len({(c.tile_n, c.num_warps) for c in decode}) == len(decode) and {c.num_stages for c in decode} == {1}


if __name__ == "__main__":
    rows = measure_all()
    if "--json" in sys.argv:
        print(json.dumps(rows))
    else:
        for r in rows:
            tile = "×".join(str(v) for k, v in r["config"].items() if k != "dtype")
            print(f"{r['family']:<11} {r['kernel']:<12} D={r['head_dim']!s:<4} {r['config'].get('dtype', ''):<5} "
                  f"{tile:<10} {r['num_warps']}w {r['num_stages']}s  {r['registers']:>3} registers  "
                  f"spilled {r['spill_stores']}/{r['spill_loads']} B  stack {r['stack']}  "
                  f"shared {r['shared'] / 1024:.1f} KiB")
