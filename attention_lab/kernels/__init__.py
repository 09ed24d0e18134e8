"""Triton machinery shared by every kernel family, and the decode kernels (chapters 10–12).

Shared: :mod:`.interpreter` (the CPU interpreter switch and a fix for Triton ≤ 3.6), :mod:`.common`
(constants, dot precision, device facts, the online-softmax update, the head-pointer helper), :mod:`.split_k`
(partial buffers and the merge kernel), :mod:`.compile_check` (compile any kernel for sm_75–sm_90 on a CPU and
read its shared memory and spills). Kernels: :mod:`.decode_attention` (paged and contiguous grouped decode,
ch11/ch05) and :mod:`.latent_decode` (MLA's absorbed decode, ch12). The FlashAttention kernel of chapter 10
lives with its story in :mod:`attention_lab.flash`.
"""
