"""Compile the decode kernels for sm_75, sm_80, sm_89 and sm_90 on the CPU and check their shared memory fits.

``triton.compile`` needs real ``JITFunction`` objects, not the interpreter's stand-ins that
tests/conftest.py creates on a CPU machine, so the compiles run in a fresh Python without
``TRITON_INTERPRET`` (this file's ``__main__``), stopped after the shared-memory allocation pass
(:mod:`attention_lab.kernels.compile_check` explains that fast mode). For each architecture the
paged and the contiguous kernel are compiled with the configuration :func:`decode_config` picks
there, at head_dim 128 and a query group of 32 (MQA with 32 heads): the largest tiles they meet.
"""

import json
import os
import subprocess
import sys

import pytest

CAPABILITIES = (75, 80, 89, 90)


def _signature(fn, constexprs: dict, dtype: str) -> tuple[dict, dict]:
    """Arg name -> Triton type, and 16-divisibility hints as the JIT gives aligned tensors and strides."""
    pointers = {"Q": f"*{dtype}", "K": f"*{dtype}", "V": f"*{dtype}", "OUT": f"*{dtype}",
                "BLOCK_TABLES": "*i32", "CONTEXT_LENS": "*i32", "M_PART": "*fp32", "L_PART": "*fp32",
                "O_PART": f"*{dtype}"}
    sig = {}
    for name in fn.arg_names:
        sig[name] = ("constexpr" if name in constexprs else pointers.get(name)
                     or ("fp32" if name == "qk_scale" else "i32"))
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if sig[name].startswith("*") or name.startswith("stride") or name == "partition_size"}
    return sig, attrs


def _shared_memory(fn, constexprs: dict, capability: int, num_warps: int, num_stages: int, dtype: str = "fp16") -> int:
    import triton
    from triton.backends.compiler import GPUTarget

    from attention_lab.kernels.compile_check import _SharedMemoryMeasured, _stop_after_shared_memory_allocation

    sig, attrs = _signature(fn, constexprs, dtype)
    source = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    restore = _stop_after_shared_memory_allocation()
    try:
        return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages}).metadata.shared
    except _SharedMemoryMeasured as measured:
        return measured.shared
    finally:
        restore()


def compile_all(capabilities=CAPABILITIES) -> list[dict]:
    """Shared memory of each kernel variant per architecture (runs without the interpreter)."""
    from attention_lab.kernels import decode_attention as dk
    from attention_lab.flash.triton_configs import shared_memory_limit

    rows = []
    head_dim, group = 128, 32
    for capability in capabilities:
        config = dk.decode_config(head_dim, 2, (capability // 10, capability % 10))
        for paged in (True, False):
            constexprs = dict(GROUP=group, GROUP_PAD=group, HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim, PAGE_SIZE=16,
                              TILE_N=config.tile_n, PAGED=paged, SINGLE_PARTITION=False, DOT_PRECISION="tf32")
            shared = _shared_memory(dk._decode_partition_kernel, constexprs, capability,
                                    config.num_warps, config.num_stages)
            rows.append(dict(capability=capability, kernel="paged" if paged else "contiguous", tile_n=config.tile_n,
                             num_warps=config.num_warps, num_stages=config.num_stages, shared=shared,
                             limit=shared_memory_limit(capability)))
    reduce_constexprs = dict(HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim, PARTS_PAD=128, CHUNK=16)
    shared = _shared_memory(dk._reduce_kernel, reduce_constexprs, min(capabilities), 4, 3)
    rows.append(dict(capability=min(capabilities), kernel="reduce", tile_n=None, num_warps=4, num_stages=3,
                     shared=shared, limit=shared_memory_limit(min(capabilities))))
    return rows


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([sys.executable, os.path.join(tests_dir, "test_decode_compile.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_architecture_compiles_and_fits(compiled):
    assert {r["capability"] for r in compiled} == set(CAPABILITIES)
    for row in compiled:
        assert 0 < row["shared"] <= row["limit"], row


def test_t4_gets_the_small_tile(compiled):
    t4 = [r for r in compiled if r["capability"] == 75 and r["kernel"] != "reduce"]
    assert all(r["tile_n"] == 32 and r["num_stages"] == 2 for r in t4)
    assert max(r["shared"] for r in t4) <= 64 * 1024


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(json.dumps(compile_all()))
