"""Every FlashAttention kernel and autotune config, and chapter 10's two teaching kernels, compile for sm_75,
sm_80, sm_89 and sm_90 — on a CPU — and the shared memory the compiler allocates fits each GPU (T4 64 KiB,
A100 163, L4 99, H100 227).

Configs that cannot fit are removed by the code (triton_configs.configs_for / the autotuner's pruning
hook), not by this test: the test only checks that what the code keeps really fits, and that the
pruning estimate is an upper bound of the real allocation.
"""

import pytest
import triton

from attention_lab.flash import triton_configs
from attention_lab.kernels import compile_check


@pytest.fixture(scope="module")
def compiled():
    # One fresh Python without TRITON_INTERPRET (the kernels must be real JITFunctions), all four targets.
    return compile_check.check_in_subprocess(families=("flash", "flash_steps"), capabilities=compile_check.CAPABILITIES)


def test_every_kept_config_fits_its_gpu(compiled):
    checked = [r for r in compiled if r["skipped"] is None]
    assert all(r["head_dim"] is None for r in compiled if r["skipped"] is not None)  # pruned at every head_dim
    assert {r["capability"] for r in checked} == set(compile_check.CAPABILITIES)
    too_big = [r for r in checked if r["shared"] > r["limit"]]
    assert not too_big, f"configs kept by the pruning rule that do not fit: {too_big}"
    for capability in compile_check.CAPABILITIES:  # every kernel has a tile at head_dim 128 on every GPU, mask or not
        for kernel in triton_configs.CONFIGS:
            assert triton_configs.configs_for(kernel, 128, 2, capability)
            assert triton_configs.configs_for(kernel, 128, 2, capability, has_mask=True)


def test_the_mask_and_window_variants_are_compiled(compiled):
    """Issue #18, item 12: CI compiled only the causal variant, so the mask tile's shared memory went unchecked
    (the 128×128 / 3-stage forward with a mask needs 256 KiB on sm_90, more than its 227)."""
    flash = [r for r in compiled if r["family"] == "flash" and r["kernel"] != "delta"]
    for capability in compile_check.CAPABILITIES:
        for kernel, configs in triton_configs.CONFIGS.items():
            rows = [r for r in flash if r["capability"] == capability and r["kernel"] == kernel + "+mask+window"]
            assert len(rows) == len(configs), (capability, kernel)
            for r in rows:
                if r["skipped"] is None:
                    assert r["fits"] and r["shared"] <= r["estimate"], r


def test_the_teaching_steps_fit_every_gpu(compiled):
    steps = [r for r in compiled if r["family"] == "flash_steps"]
    assert {(r["kernel"], r["capability"]) for r in steps} == {(k, c) for k in ("two_pass", "online")
                                                                for c in compile_check.CAPABILITIES}
    assert all(r["fits"] for r in steps), steps


def test_pruning_estimate_bounds_the_real_allocation(compiled):
    for r in compiled:
        if r["estimate"] is not None:
            assert r["shared"] <= r["estimate"], r


def test_pruning_rule_drops_what_a_t4_cannot_hold():
    forward_t4 = triton_configs.configs_for("forward", 128, 2, 75)
    forward_h100 = triton_configs.configs_for("forward", 128, 2, 90)
    assert len(forward_h100) == len(triton_configs.TENSOR_CORE_CONFIGS["forward"])  # 227 KiB holds every one
    assert all(c.kwargs["BLOCK_M"] <= 64 for c in forward_t4)
    assert triton_configs.shared_memory_limit(86) == triton_configs.shared_memory_limit(89) == 99 * 1024
    # an fp32 (4-byte) tile needs twice the shared memory: fewer configs fit
    assert len(triton_configs.configs_for("forward", 128, 4, 90)) < len(forward_h100)


def test_the_mask_tile_is_counted():
    """Issue #18, item 12: on sm_90 the 128×128 / 8-warp / 3-stage forward at head_dim 128 fits without a mask
    (229,376 B of 232,448) and not with one (Triton 3.6 allocated 233,472 B, 3.9 allocates 262,144)."""
    big = triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3)
    assert triton_configs.estimated_shared_memory("forward", big, 128, 2, 90) == 229_376
    assert triton_configs.estimated_shared_memory("forward", big, 128, 2, 90, has_mask=True) >= 262_144
    assert triton_configs.fits("forward", big, 128, 2, 90) and not triton_configs.fits("forward", big, 128, 2, 90, True)
    assert big not in triton_configs.configs_for("forward", 128, 2, 90, has_mask=True)
    for kernel in ("backward_kv", "backward_q"):  # the backward kernels' mask tile: 1 byte per pair
        config = triton_configs.CONFIGS[kernel][0]
        extra = config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"]
        assert (triton_configs.estimated_shared_memory(kernel, config, 128, 2, 90, has_mask=True)
                == triton_configs.estimated_shared_memory(kernel, config, 128, 2, 90) + extra)


def test_the_autotuner_prunes_by_the_mask_too(monkeypatch):
    """The autotuner's pruning hook reads HAS_MASK from the launch: with a mask it drops what only fits without."""
    import torch

    monkeypatch.setattr(triton_configs, "device_capability", lambda device: 90)  # as on an H100, CPU tensors
    prune = triton_configs.make_pruner("forward")
    q = torch.empty(1, 1, 1, 128, dtype=torch.float16)
    with_mask = prune(triton_configs.FORWARD_CONFIGS, {"Q": q}, BLOCK_D=128, HAS_MASK=True)
    without = prune(triton_configs.FORWARD_CONFIGS, {"Q": q}, BLOCK_D=128, HAS_MASK=False)
    tensor_core = triton_configs.TENSOR_CORE_CONFIGS["forward"]
    assert len(without) == len(tensor_core) and tensor_core[0] not in with_mask


@pytest.mark.parametrize("capability", [75, 80, 89, 90])
def test_the_autotuner_gets_the_t4_tiles_on_a_t4_and_only_there(monkeypatch, capability):
    """On sm_75 the pruning hook keeps exactly the T4's one tile for the head_dim, fp16 or fp32 (one stage: nothing
    is pipelined there); on sm_80+ exactly what the shared-memory rule keeps of the tensor-core configs, as before."""
    import torch

    monkeypatch.setattr(triton_configs, "device_capability", lambda device: capability)
    key = lambda c: (c.kwargs, c.num_warps, c.num_stages, c.maxnreg)  # noqa: E731
    for kernel, configs in triton_configs.CONFIGS.items():
        prune = triton_configs.make_pruner(kernel)
        for block_d in (16, 32, 64, 128):
            for dtype in (torch.float16, torch.float32):
                for has_mask in (False, True):
                    q = torch.empty(1, dtype=dtype)
                    try:
                        kept = prune(configs, {"Q": q}, BLOCK_D=block_d, HAS_MASK=has_mask)
                    except ValueError:  # nothing fits (e.g. fp32 with a mask at head_dim 128 on an L4)
                        kept = []
                    if capability == 75:
                        expected = [triton_configs.T4_CONFIGS[kernel][block_d]]
                        assert [key(c) for c in kept] == [key(c) for c in expected]
                        assert kept[0].num_stages == 1 and kept[0].maxnreg == triton_configs.T4_MAXNREG
                    else:
                        expected = [c for c in triton_configs.TENSOR_CORE_CONFIGS[kernel] if triton_configs.fits(
                            kernel, c, block_d, q.element_size(), capability, has_mask)]
                        assert [key(c) for c in kept] == [key(c) for c in expected]
                        assert all(c.num_stages > 1 and c.maxnreg is None for c in kept)


def test_a_fixed_tile_that_cannot_fit_is_refused_before_launch():
    """A user-fixed tile= that the rule says cannot fit is a ValueError naming it (a launch would fail)."""
    tile = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3}
    triton_configs.check_tile_fits("forward", tile, 128, 2, 90)  # fits without a mask
    with pytest.raises(ValueError, match=r"tile \{'BLOCK_M': 128.*forward kernel at head_dim 128 with a mask.*227 KiB"):
        triton_configs.check_tile_fits("forward", tile, 128, 2, 90, has_mask=True)
    with pytest.raises(ValueError, match="tile.*backward_kv kernel.*sm_75"):
        triton_configs.check_tile_fits("backward_kv", {"BLOCK_M": 64, "BLOCK_N": 128, "num_stages": 3}, 128, 2, 75)


def test_a_too_big_tile_compiles_but_does_not_fit():
    """The reason the check reads metadata.shared: Triton compiles a tile even when the GPU cannot hold it."""
    big = triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3)
    assert not triton_configs.fits("forward", big, 128, 2, 75)
    assert triton_configs.estimated_shared_memory("forward", big, 128, 2, 75) > 64 * 1024
