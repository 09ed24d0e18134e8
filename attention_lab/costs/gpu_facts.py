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
