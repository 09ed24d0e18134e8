"""FlashAttention, built up over three chapters: online softmax (08), tiled PyTorch (09), Triton (10).

``flash_attention`` (the Triton kernel, same contract as the reference attention) is imported on
first use, so importing this package never needs Triton or a GPU.
"""

from __future__ import annotations


def flash_attention(q, k, v, mask=None, causal: bool = False, window: int | None = None, scale: float | None = None):
    """The Triton FlashAttention kernel (chapter 10); see :mod:`attention_lab.flash.triton_attention`."""
    from attention_lab.flash.triton_attention import flash_attention as triton_flash_attention

    return triton_flash_attention(q, k, v, mask=mask, causal=causal, window=window, scale=scale)
