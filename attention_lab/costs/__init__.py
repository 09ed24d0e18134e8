"""Cost models and measurement: work per decode step (ch03), memory-bound decode (ch05), the roofline and HBM
traffic (ch07, ch09), facts about GPUs and the card at hand (ch07), and timing / peak-memory helpers."""
