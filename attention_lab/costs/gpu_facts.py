"""GPU facts students meet (T4, A100, H100, H200), detection of the card at hand, and a copy-bandwidth probe.

The table holds datasheet numbers; chapter 07 cites each source and checks the row of the card it
runs on against what the driver reports (SM count) and what a device-to-device copy measures.
Nothing here touches CUDA at import time: :func:`detect_device` asks only when called and answers
"no GPU" on a CPU machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attention_lab.costs.timing import time_function

WARP_SIZE = 32  # threads per warp on every NVIDIA GPU so far (CUDA C++ Programming Guide, "SIMT Architecture")
FULL_GH100_SMS = 144  # SMs on the full GH100 die; no H100 product enables all of them (NVIDIA H100 whitepaper, 2022)
# The H100 row of the GPU table the lecture borrows from a blog post: the full die's SM count next to the
# PCIe card's bandwidth. Chapter 07 checks it against the driver and a measured copy.
LECTURE_H100_ROW = {"sms": 144, "bandwidth_tb_s": 2.0}
# Three sentences of the same blog post's GPU section, as issue #17 quotes them; chapter 07 names each one and
# shows, with the numbers below, what is true instead.
BLOG_CLAIMS = {
    "warp": "1 warp equal 3 threads",  # a warp is WARP_SIZE = 32 threads
    "sm": "1 SM – 1 thread block",  # an SM holds several resident blocks at once (resident_blocks)
    "kernel": "threads (a.k.a. kernel)",  # a kernel is the function a grid of threads runs (launch_geometry)
}


@dataclass(frozen=True)
class GPUSpec:
    """One card's datasheet row. Rates are dense (no 2:4 sparsity); sizes in the units named."""

    name: str  # product name as students see it in `nvidia-smi`
    architecture: str  # Turing, Ampere, Hopper
    compute_capability: int  # one number, as everywhere in the book: sm_75 -> 75
    sms: int  # streaming multiprocessors enabled on this product
    shared_memory_per_sm_kib: int  # the most shared memory one SM can give its blocks (the tile budget, "SRAM")
    l1_shared_per_sm_kib: int  # the combined L1 + shared-memory array per SM it is carved from
    l2_mib: float  # L2 cache, shared by all SMs
    memory_gib: float  # device memory ("HBM"; GDDR6 on the T4)
    memory_kind: str  # HBM2e, HBM3, HBM3e, GDDR6
    bandwidth_tb_s: float  # device-memory bandwidth, TB/s (10**12 bytes per second)
    fp16_tflops: float  # dense fp16 tensor-core peak (fp32 accumulate), TFLOP/s
    bf16_tflops: float | None  # dense bf16 tensor-core peak; None where the card has no bf16 (T4)
    source: str  # where the numbers come from (cited in chapter 07)

    @property
    def peak_flops(self) -> float:
        """Dense 16-bit tensor-core peak in FLOP/s."""
        return self.fp16_tflops * 1e12

    @property
    def bandwidth_bytes_s(self) -> float:
        """Device-memory bandwidth in bytes/s."""
        return self.bandwidth_tb_s * 1e12

    @property
    def ridge_point(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which a kernel can be compute-bound on this card."""
        return self.peak_flops / self.bandwidth_bytes_s


GPU_TABLE: dict[str, GPUSpec] = {
    "T4": GPUSpec("T4", "Turing", 75, 40, 64, 96, 4, 16, "GDDR6", 0.320, 65.0, None,
                  "NVIDIA T4 datasheet (2019); Turing tuning guide (64 KiB shared of 96 KiB L1/shared per SM)"),
    "A100 SXM 80GB": GPUSpec("A100 SXM 80GB", "Ampere", 80, 108, 164, 192, 40, 80, "HBM2e", 2.039, 312.0, 312.0,
                             "NVIDIA A100 datasheet (2021) and A100 architecture whitepaper (2020)"),
    "H100 PCIe": GPUSpec("H100 PCIe", "Hopper", 90, 114, 228, 256, 50, 80, "HBM2e", 2.0, 756.0, 756.0,
                         "NVIDIA H100 datasheet (2022) and H100 architecture whitepaper (2022), PCIe column"),
    "H100 SXM": GPUSpec("H100 SXM", "Hopper", 90, 132, 228, 256, 50, 80, "HBM3", 3.35, 989.4, 989.4,
                        "NVIDIA H100 datasheet (2022) and H100 architecture whitepaper (2022), SXM5 column"),
    "H200 SXM": GPUSpec("H200 SXM", "Hopper", 90, 132, 228, 256, 60, 141, "HBM3e", 4.8, 989.4, 989.4,
                        "NVIDIA H200 datasheet (2024): same GH100 compute as the H100 SXM, 141 GB HBM3e at 4.8 TB/s; "
                        "the datasheet gives no L2 size, 60 MiB is what the CUDA driver reports on an H200"),
}


def spec_for_name(device_name: str) -> GPUSpec | None:
    """The table row for a driver-reported name ("NVIDIA H100 80GB HBM3", "Tesla T4", ...), or None.

    Variants the table does not hold (H100 NVL, GH200, A100 40GB, ...) give None rather than a wrong row.
    """
    words = device_name.upper().replace("-", " ").split()  # "NVIDIA A100-SXM4-80GB" -> [..., "A100", "SXM4", "80GB"]
    if "T4" in words:
        return GPU_TABLE["T4"]
    if "A100" in words and "40GB" not in words:
        return GPU_TABLE["A100 SXM 80GB"] if "PCIE" not in words else None
    if "H200" in words and "NVL" not in words:
        return GPU_TABLE["H200 SXM"]
    if "H100" in words and "NVL" not in words:
        return GPU_TABLE["H100 PCIe"] if "PCIE" in words else GPU_TABLE["H100 SXM"]
    return None


@dataclass(frozen=True)
class DeviceInfo:
    """What the driver says about the current device (``available=False`` on a CPU-only machine)."""

    available: bool
    name: str
    compute_capability: int | None = None  # sm_90 -> 90
    sms: int | None = None
    memory_gib: float | None = None
    l2_mib: float | None = None
    warp_size: int | None = None
    shared_memory_per_block_kib: float | None = None  # the opt-in maximum one block may ask for

    @property
    def spec(self) -> GPUSpec | None:
        """The datasheet row matching this device, if the table has one."""
        return spec_for_name(self.name) if self.available else None

    def describe(self) -> str:
        """One sentence for a notebook: the card and its key numbers, or why there is none."""
        if not self.available:
            return "no GPU: this machine runs the CPU path (numbers below come from the table and committed results)"
        major, minor = divmod(self.compute_capability, 10)
        extra = f", {self.l2_mib:.0f} MiB L2" if self.l2_mib else ""
        return (f"{self.name}: compute capability {major}.{minor} (sm_{self.compute_capability}), {self.sms} SMs, "
                f"{self.memory_gib:.1f} GiB{extra}")


def detect_device(index: int = 0) -> DeviceInfo:
    """Query CUDA device ``index`` (name, compute capability, SM count, memory, L2); "no GPU" without CUDA."""
    if not torch.cuda.is_available():
        return DeviceInfo(available=False, name="no GPU")
    props = torch.cuda.get_device_properties(index)
    l2 = getattr(props, "L2_cache_size", None)  # not present in every torch version
    smem = getattr(props, "shared_memory_per_block_optin", None)
    return DeviceInfo(
        available=True,
        name=props.name,
        compute_capability=10 * props.major + props.minor,
        sms=props.multi_processor_count,
        memory_gib=props.total_memory / 2**30,
        l2_mib=l2 / 2**20 if l2 else None,
        warp_size=getattr(props, "warp_size", WARP_SIZE),
        shared_memory_per_block_kib=smem / 1024 if smem else None,
    )


def measure_copy_bandwidth(n_bytes: int = 2**28, device: torch.device | str | None = None,
                           repeats: int = 10) -> float:
    """Bytes per second of a large device-to-device copy, counting bytes read PLUS bytes written.

    ``dst.copy_(src)`` of ``n_bytes`` moves ``2 * n_bytes`` through memory. On a GPU use at least
    a few hundred MiB so the L2 cache cannot hold it (the default is 256 MiB, 50 MiB L2 on an H100);
    on a CPU it measures DRAM bandwidth the same way (use a smaller ``n_bytes``).
    """
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if n_bytes < 1024:
        raise ValueError(f"n_bytes must be at least 1024, got {n_bytes}")
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = time_function(lambda: dst.copy_(src), warmup=2, repeats=repeats, device=device)
    return 2 * src.numel() * src.element_size() / seconds


def measure_matmul_flops(n: int = 8192, dtype: torch.dtype = torch.bfloat16,
                         device: torch.device | str | None = None, repeats: int = 10) -> float:
    """FLOP/s of an ``n × n × n`` matrix product (``2 n³`` FLOPs) on random data: the card's real compute ceiling."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_function(lambda: a @ b, warmup=3, repeats=repeats, device=device)
    return 2 * n**3 / seconds


# --- what one SM can hold at once: resident blocks ------------------------------------------------------------


@dataclass(frozen=True)
class SMLimits:
    """Per-SM and per-block limits of one compute capability (CUDA C++ Programming Guide, "Technical
    Specifications per Compute Capability"). Sizes in the units named."""

    compute_capability: int  # sm_80 -> 80
    max_threads_per_sm: int  # resident threads (= 32 × resident warps)
    max_blocks_per_sm: int  # resident thread blocks
    max_threads_per_block: int
    registers_per_sm: int  # 32-bit registers in one SM's register file
    max_registers_per_thread: int
    shared_memory_per_sm_kib: int  # the most shared memory an SM can give all its blocks together
    shared_memory_per_block_kib: int  # the most one block may ask for (opt-in)
    reserved_shared_per_block_bytes: int  # taken by CUDA itself from each block's share (1 KiB from sm_80 on)
    register_allocation_unit: int = 256  # registers are handed to a warp in units of 256 (occupancy calculator)


SM_LIMITS: dict[int, SMLimits] = {
    75: SMLimits(75, 1024, 16, 1024, 65536, 255, 64, 64, 0),  # Turing (T4)
    80: SMLimits(80, 2048, 32, 1024, 65536, 255, 164, 163, 1024),  # A100
    90: SMLimits(90, 2048, 32, 1024, 65536, 255, 228, 227, 1024),  # H100, H200
}


@dataclass(frozen=True)
class Residency:
    """How many blocks of one launch an SM holds at once, and which resource stops it holding more."""

    blocks: int  # resident blocks per SM: the smallest of ``limits``
    limits: dict[str, int]  # resource -> how many blocks that resource alone would allow
    threads_per_block: int

    @property
    def binding(self) -> str:
        """The resource that sets :attr:`blocks` (the first one, where several tie)."""
        return next(name for name, count in self.limits.items() if count == self.blocks)

    @property
    def threads(self) -> int:
        """Resident threads per SM."""
        return self.blocks * self.threads_per_block


def resident_blocks(compute_capability: int, threads_per_block: int, registers_per_thread: int,
                    shared_bytes_per_block: int) -> Residency:
    """Blocks of one kernel launch that a single SM runs at the same time (a simplified occupancy calculator).

    Four limits, each computed alone: the SM's thread slots, its block slots, its register file (registers are
    allocated per warp in units of :attr:`SMLimits.register_allocation_unit`) and its shared memory (each block
    also loses :attr:`SMLimits.reserved_shared_per_block_bytes` to CUDA); the SM holds the smallest. Shared
    memory's own allocation granularity (128–256 bytes) is left out. A ``ValueError`` says why a block that
    cannot launch at all (too many threads, registers or bytes) cannot.
    """
    if compute_capability not in SM_LIMITS:
        raise ValueError(f"compute_capability must be one of {sorted(SM_LIMITS)}, got {compute_capability!r}")
    limits = SM_LIMITS[compute_capability]
    for name, value in (("threads_per_block", threads_per_block), ("registers_per_thread", registers_per_thread)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(shared_bytes_per_block, bool) or not isinstance(shared_bytes_per_block, int) or shared_bytes_per_block < 0:
        raise ValueError(f"shared_bytes_per_block must be an integer >= 0, got {shared_bytes_per_block!r}")
    if threads_per_block > limits.max_threads_per_block:
        raise ValueError(f"threads_per_block must be at most {limits.max_threads_per_block} on sm_{compute_capability}, "
                         f"got {threads_per_block}")
    if registers_per_thread > limits.max_registers_per_thread:
        raise ValueError(f"registers_per_thread must be at most {limits.max_registers_per_thread}, got {registers_per_thread}")
    if shared_bytes_per_block > limits.shared_memory_per_block_kib * 1024:
        raise ValueError(f"shared_bytes_per_block must be at most {limits.shared_memory_per_block_kib} KiB on "
                         f"sm_{compute_capability}, got {shared_bytes_per_block} bytes")
    warps = -(-threads_per_block // WARP_SIZE)  # a block is run as whole warps
    unit = limits.register_allocation_unit
    registers_per_warp = -(-registers_per_thread * WARP_SIZE // unit) * unit
    shared_per_block = shared_bytes_per_block + limits.reserved_shared_per_block_bytes
    by_resource = {
        "threads": limits.max_threads_per_sm // (warps * WARP_SIZE),
        "block slots": limits.max_blocks_per_sm,
        "registers": (limits.registers_per_sm // registers_per_warp) // warps,
        # a block that asks for no shared memory (and loses none to CUDA) is not limited by it
        "shared memory": ((limits.shared_memory_per_sm_kib * 1024) // shared_per_block if shared_per_block
                          else limits.max_blocks_per_sm),
    }
    return Residency(min(by_resource.values()), by_resource, threads_per_block)


@dataclass(frozen=True)
class LaunchGeometry:
    """One kernel launch: one function, run by ``blocks × threads_per_block`` threads."""

    elements: int
    threads_per_block: int
    elements_per_thread: int
    blocks: int  # the grid
    threads: int  # blocks × threads_per_block

    def waves(self, sms: int, resident_blocks_per_sm: int) -> float:
        """How many times over the card's resident block slots the grid fills (blocks / (SMs × resident per SM))."""
        return self.blocks / (sms * resident_blocks_per_sm)


def launch_geometry(elements: int, threads_per_block: int = 256, elements_per_thread: int = 1) -> LaunchGeometry:
    """The grid of an elementwise kernel over ``elements`` values: each thread handles ``elements_per_thread``
    of them, ``threads_per_block`` threads form a block, and ``⌈elements / (threads_per_block ·
    elements_per_thread)⌉`` blocks form the grid. Every thread runs the same function: the kernel."""
    for name, value in (("elements", elements), ("threads_per_block", threads_per_block),
                        ("elements_per_thread", elements_per_thread)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    blocks = -(-elements // (threads_per_block * elements_per_thread))
    return LaunchGeometry(elements, threads_per_block, elements_per_thread, blocks, blocks * threads_per_block)


# --- the memory hierarchy the FlashAttention paper draws (and the blog copies) ----------------------------------


@dataclass(frozen=True)
class MemoryLevel:
    """One level of a memory hierarchy: its bandwidth and its size."""

    name: str
    bandwidth_bytes_s: float
    capacity_bytes: float
    where: str  # what the number describes


FLASH_PAPER_FIGURE_1 = ("Dao et al., FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness "
                        "(2022, arXiv:2205.14135), Figure 1 left: 'Memory Hierarchy with Bandwidth & Memory Size'")
# The figure's three levels, for an A100 (40 GB) in a host with > 1 TB of DRAM.
FLASH_PAPER_MEMORY_HIERARCHY = (
    MemoryLevel("SRAM", 19e12, 20e6, "GPU on-chip shared memory / L1, all SMs together"),
    MemoryLevel("HBM", 1.5e12, 40e9, "GPU device memory (A100 40 GB)"),
    MemoryLevel("CPU DRAM", 12.8e9, 1e12, "main memory of the host (> 1 TB)"),
)
# Shared memory has 32 banks, each delivering 32 bits per clock (CUDA C++ Programming Guide, "Shared Memory",
# compute capability 5.x and later): 128 bytes per clock per SM.
SHARED_MEMORY_BYTES_PER_CLOCK_PER_SM = 32 * 4
A100_BOOST_CLOCK_GHZ = 1.41  # NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020), A100 SXM4 boost clock
# Dense fp16 tensor-core multiply-adds per clock per A100 SM: 4 tensor cores × 256 FMA (same whitepaper).
A100_TENSOR_FMA_PER_CLOCK_PER_SM = 4 * 256
# FP32 lanes per A100 SM (same whitepaper: 64 FP32 cores per SM): the units that run everything that is not a
# matrix product (exp, max, rescaling), at one fused multiply-add per lane per clock.
A100_FP32_LANES_PER_SM = 64


def shared_memory_bandwidth(sms: int, clock_ghz: float,
                            bytes_per_clock_per_sm: int = SHARED_MEMORY_BYTES_PER_CLOCK_PER_SM) -> float:
    """Aggregate shared-memory bandwidth in bytes/s: every SM's banks delivering ``bytes_per_clock_per_sm``
    each clock — ``sms × bytes_per_clock_per_sm × clock``."""
    check = int(sms) == sms and sms >= 1 and clock_ghz > 0 and bytes_per_clock_per_sm >= 1
    if not check:
        raise ValueError(f"sms must be a positive integer and clock_ghz, bytes_per_clock_per_sm positive; got "
                         f"{sms!r}, {clock_ghz!r}, {bytes_per_clock_per_sm!r}")
    return sms * bytes_per_clock_per_sm * clock_ghz * 1e9
