"""attention_lab: the library behind the notebooks, one idea per module, in chapter order."""

from attention_lab.attention import MultiHeadAttention, attention_weights, scaled_dot_product_attention, torch_attention
from attention_lab.masks import causal_mask, padding_mask, sliding_window_mask
from attention_lab.mla import MLASettings
from attention_lab.model import MHASettings, TinyGPT, TinyGPTConfig

__all__ = [
    "MHASettings",
    "MLASettings",
    "MultiHeadAttention",
    "TinyGPT",
    "TinyGPTConfig",
    "attention_weights",
    "causal_mask",
    "padding_mask",
    "scaled_dot_product_attention",
    "sliding_window_mask",
    "torch_attention",
]
__version__ = "0.1.0"
