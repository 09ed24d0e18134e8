# %% [markdown]
# # 08 · Online softmax
#
# Chapter 07 ended with a requirement: to fuse attention into one kernel, the $N \times N$ scores must
# never be written to HBM. But the softmax needs a whole row — its maximum and its sum — before it can
# produce a single weight. Or does it? This chapter shows, on a three-key example you can check by
# hand, that attention can be computed **one key at a time**, keeping only a running numerator, a
# running denominator and a running maximum. That one trick (Milakov & Gimelshein, *Online normalizer
# calculation for softmax*, 2018) is what FlashAttention is built on.

# %%
import inspect
import math
import re

import matplotlib.pyplot as plt
import torch

from attention_lab.flash import triton_attention
from attention_lab.flash.tiled import tiled_attention_forward
from attention_lab.kernels import common as kernel_common
from attention_lab.flash.online_softmax import (TOY_KEYS, TOY_QUERY, TOY_VALUES, online_attention, online_softmax,
                                                softmax_without_max, stream_plain, stream_with_max, toy_closed_form,
                                                toy_scores)

torch.set_num_threads(1)  # this chapter's tensors are small: one CPU thread beats several contending for them
plt.rcParams.update({"font.size": 12})  # figures stay readable when projected

# %% [markdown]
# ## The toy
#
# One query $q = 1$, three keys $K = [1, 2, 3]$ and three values $V = [2, 4, 8]$ (scalars, $d = 1$; the
# toy leaves out the $1/\sqrt d$). The scores are $s_j = q k_j$ and the output is the softmax-weighted
# average of the values:
#
# $$o = \frac{\sum_j e^{s_j} v_j}{\sum_j e^{s_j}} = \frac{2e + 4e^2 + 8e^3}{e + e^2 + e^3}.$$

# %%
scores = toy_scores()
print(f"q = {TOY_QUERY}, K = {list(TOY_KEYS)}, V = {list(TOY_VALUES)} -> scores {scores}")
weights = torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=0)
print("softmax weights:", [round(w, 4) for w in weights.tolist()])
print(f"closed form (2e+4e²+8e³)/(e+e²+e³) = {toy_closed_form():.12f}")
print(f"weights · V                       = {float(weights @ torch.tensor(TOY_VALUES, dtype=torch.float64)):.12f}")

# %% [markdown]
# ## Streaming: a running numerator N and denominator D
#
# The sums in the numerator and denominator can be built up as the keys arrive:
#
# $$N_j = N_{j-1} + e^{s_j} v_j, \qquad D_j = D_{j-1} + e^{s_j}, \qquad o_j = N_j / D_j .$$
#
# After each key, $N/D$ is exactly the attention output over the keys seen so far — nothing else has to be
# remembered.

# %%
print(f"{'key':>3} {'s':>4} {'v':>4} {'N':>12} {'D':>12} {'N/D':>10}")
for step in stream_plain(scores, TOY_VALUES):
    print(f"{step.key_index:3d} {step.score:4.0f} {step.value:4.0f} {step.numerator:12.6f} {step.denominator:12.6f} "
          f"{step.output:10.6f}")
streamed = stream_plain(scores, TOY_VALUES)[-1].output
print(f"streamed N/D = {streamed:.15f}, closed form = {toy_closed_form():.15f}, difference {abs(streamed - toy_closed_form()):.1e}")

# %% [markdown]
# ## The running max, and rescaling
#
# $e^{s}$ overflows for large scores (next section), so real kernels subtract the row maximum first. Online,
# the maximum is not known in advance — only the **running** maximum $m$. Keep $N$ and $D$ relative to it:
# $N = \sum_j e^{s_j - m} v_j$, $D = \sum_j e^{s_j - m}$. When a new score raises the maximum from
# $m_{old}$ to $m_{new}$, everything accumulated so far was computed against the old maximum and must be
# rescaled by $e^{m_{old} - m_{new}}$ — **both** $N$ and $D$:
#
# $$m_{new} = \max(m_{old}, s_j), \quad
#   N \leftarrow N\, e^{m_{old} - m_{new}} + e^{s_j - m_{new}} v_j, \quad
#   D \leftarrow D\, e^{m_{old} - m_{new}} + e^{s_j - m_{new}}.$$
#
# The rescale factor is at most 1, and every exponent is $\le 0$: nothing can overflow. The state before
# the first key is $m = -\infty$, $N = D = 0$.

# %%
print(f"{'key':>3} {'s':>4} {'v':>4} {'m':>4} {'rescale':>9} {'N':>10} {'D':>10} {'N/D':>10}")
for step in stream_with_max(scores, TOY_VALUES):
    print(f"{step.key_index:3d} {step.score:4.0f} {step.value:4.0f} {step.m:4.0f} {step.rescale:9.6f} "
          f"{step.numerator:10.6f} {step.denominator:10.6f} {step.output:10.6f}")
online = stream_with_max(scores, TOY_VALUES)[-1].output
print(f"with the running max: N/D = {online:.15f}; |difference from the closed form| = {abs(online - toy_closed_form()):.1e}"
      f" (< 1e-12: {abs(online - toy_closed_form()) < 1e-12})")

# %% [markdown]
# The first rescale is $e^{-\infty} = 0$: there is nothing to rescale yet. After that, each row's $N$ and
# $D$ are the plain table's divided by $e^{m}$: at key 1 the maximum moves
# from 1 to 2, so the old $N = 2$ and $D = 1$ are multiplied by $e^{-1}$ before the new key is added. The
# ratio $N/D$ is the same in both tables at every step.
#
# ## Why the max matters
#
# $e^{x}$ is finite only up to $x = \ln(\text{largest float})$:

# %%
for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
    print(f"{str(dtype):15}: exp overflows above x = {math.log(torch.finfo(dtype).max):7.2f}")
big_scores = [1000.0, 1001.0, 1002.0]  # the toy's scores shifted by 999
plain_big = stream_plain(big_scores, TOY_VALUES)[-1]
max_big = stream_with_max(big_scores, TOY_VALUES)[-1]
print(f"\nscores {big_scores}: without the max N = {plain_big.numerator}, D = {plain_big.denominator}, "
      f"N/D = {plain_big.output}")
print(f"with the running max: N/D = {max_big.output:.12f} (softmax ignores a shift: same as the toy, "
      f"{abs(max_big.output - toy_closed_form()):.1e} away)")
row = torch.tensor([[1000.0, 1001.0, 1002.0]])
print("fp32 exp(x)/Σexp(x):", softmax_without_max(row).tolist(), "| online softmax:", online_softmax(row).tolist())

# %% [markdown]
# ## What overflows where, in fp16
#
# fp16 is the format of the free T4 (it has no bf16), and the table above gives it by far the smallest
# limit. But "in fp16 the kernel returns NaN" would overstate it: what breaks depends on *which* numbers are
# held in fp16. Three ways to compute the same softmax, on a row whose largest score is just past the fp16
# limit, and on one past the fp32 limit (fp16 stores both scores exactly):

# %%
fp16_limit = math.log(torch.finfo(torch.float16).max)
fp32_limit = math.log(torch.finfo(torch.float32).max)
rows16 = {f"largest score {math.ceil(fp16_limit)}": torch.tensor([[math.ceil(fp16_limit), 3.0, 0.0]], dtype=torch.float16),
          f"largest score {math.ceil(fp32_limit)}": torch.tensor([[math.ceil(fp32_limit), 3.0, 0.0]], dtype=torch.float16)}
ways = {"exp(s) / Σ exp(s), all in fp16": lambda row: softmax_without_max(row),
        "exp(s) / Σ exp(s), statistics in fp32": lambda row: softmax_without_max(row.float()),
        "running max subtracted, all in fp16": lambda row: online_softmax(row)}
print(f"exp overflows above {fp16_limit:.2f} in fp16 and above {fp32_limit:.2f} in fp32\n")
for label, row in rows16.items():
    print(f"{label}: scores {row.tolist()[0]}")
    for way, softmax in ways.items():
        weights = softmax(row)
        print(f"    {way:40}: {[round(w, 4) for w in weights.float().tolist()[0]]}"
              f"{'  <- NaN' if torch.isnan(weights).any() else ''}")

# %% [markdown]
# So, precisely: **without** the max, $e^{s}$ overflows to $\infty$ in fp16 once a score passes the first limit
# printed above, and the row becomes $\infty / \infty = $ NaN; a kernel that computes $e^s$ and keeps $m$ and
# $\ell$ in fp32 would survive up to the fp32 limit. **With** the running max every exponent is $\le 0$,
# so $e^{s - m} \le 1$ cannot overflow in any format. The book's kernels do both — they subtract the
# running max *and* keep the statistics in fp32, even for fp16 inputs: chapter 09's tiled forward computes in
# fp32 (its saved log-sum-exp comes back as fp32), and chapter 10's Triton kernel creates $m_i$, $\ell_i$
# and the accumulator in fp32 and casts only $P$ down, for the $P V$ product. Its own source, read from the
# library:

# %%
state_lines = [line.strip() for line in inspect.getsource(triton_attention).splitlines()
               if re.match(r"\s+(m_i|l_i|acc) = tl\.zeros\(", line)]  # where the forward creates its state
cast_lines = [line.strip() for line in inspect.getsource(kernel_common).splitlines()  # the update every kernel calls
              if "p.to(values.dtype)" in line]
for line in state_lines:
    print("flash/triton_attention.py:", line)
for line in cast_lines:
    print("kernels/common.py:        ", line)
if not (state_lines and cast_lines):
    print("the kernel's source no longer has the lines this cell looks for: read attention_lab/flash/triton_attention.py")
generator = torch.Generator().manual_seed(1)
q16, k16, v16 = (torch.randn(1, 2, 40, 64, generator=generator).half() for _ in range(3))
q16 = q16 * 30  # scores up to a few hundred: past the fp16 AND the fp32 limit of exp
out16, lse16 = tiled_attention_forward(q16, k16, v16)
largest = (q16.float() @ k16.float().transpose(-1, -2) * 64**-0.5).max().item()
reference = torch.softmax(q16.double() @ k16.double().transpose(-1, -2) * 64**-0.5, -1) @ v16.double()
print(f"\nchapter 09's tiled forward, fp16 inputs, largest scaled score {largest:.0f}: output {out16.dtype}, "
      f"finite {torch.isfinite(out16).all().item()}, max error vs fp64 {(out16.double() - reference).abs().max():.1e} "
      f"(fp16 spacing near 1: {torch.finfo(torch.float16).eps:.1e}); LSE kept in {lse16.dtype}")

# %% [markdown]
# There is a second reason to keep $\ell$ in fp32, and it is about precision, not range. $\ell = \sum_j
# e^{s_j - m}$ can grow as large as the number of keys, and fp16 carries 11 significant bits: once a running
# sum reaches $2^{11}$, adding 1 no longer changes it. A row of equal scores, folded in one key at a time:

# %%
for dtype in (torch.float16, torch.float32):
    l_running = torch.zeros((), dtype=dtype)
    for _ in range(4096):
        l_running = l_running + torch.ones((), dtype=dtype)  # one key of weight exp(s − m) = 1
    bits = round(-math.log2(torch.finfo(dtype).eps)) + 1  # significant bits, the implicit leading one included
    print(f"{str(dtype):14}: ℓ after 4096 equal keys = {l_running.item():.0f} (should be 4096); {bits} significant "
          f"bits -> adding 1 is lost once ℓ reaches 2^{bits} = {2 ** bits}")

# %% [markdown]
# ## Blocks and vectors
#
# Nothing above needed the keys to arrive one at a time. A **block** of keys updates the state at once:
# take the block's row maximum, exponentiate the block, rescale the old state once. With a query block of
# $R$ rows and values of width $d_v$, $m$ and $D$ (the paper's $m_i$ and $\ell_i$) become vectors of length
# $R$ and $N$ (the paper's accumulator) an $R \times d_v$ matrix — exactly the inner loop of
# FlashAttention. The library's `online_softmax_update` does this; here it runs on rows with masked
# ($-\infty$) keys and huge logits, for several block sizes:

# %%
generator = torch.Generator().manual_seed(0)
rows = torch.randn(4, 100, generator=generator, dtype=torch.float64) * 5
rows[0, :30] = -math.inf  # the first blocks of this row are entirely masked
rows[1, ::4] = -math.inf  # scattered masked keys
rows[2] += 1000.0  # huge logits
rows[3, 77] = 500.0  # one dominant key, late in the row
values = torch.randn(100, 8, generator=generator, dtype=torch.float64)
expected_weights = torch.softmax(rows, dim=-1)
expected_output = expected_weights @ values
for block_size in (1, 7, 16, 100):
    weight_error = (online_softmax(rows, block_size) - expected_weights).abs().max().item()
    output_error = (online_attention(rows, values, block_size) - expected_output).abs().max().item()
    print(f"block of {block_size:3d} keys: max |online − softmax| = {weight_error:.1e}, "
          f"max |online attention − softmax·V| = {output_error:.1e}")
print("exp(x)/Σexp(x) on the huge-logit row gives NaN:", torch.isnan(softmax_without_max(rows[2])).all().item())

# %% [markdown]
# The state evolves as the blocks stream past. For one row of 64 random logits in blocks of 8, the running
# maximum only ever steps up; the running denominator $D$ (relative to the current max) grows with every
# key and is multiplied down whenever a new maximum forces a rescale:

# %%
row = torch.randn(64, generator=torch.Generator().manual_seed(3)) * 3
steps = stream_with_max(row.tolist(), [0.0] * 64)
block_size = 8
block_ends = list(range(block_size - 1, 64, block_size))
fig, (ax_m, ax_d) = plt.subplots(1, 2, figsize=(14, 4.5))
ax_m.plot(row.numpy(), ".", color="grey", label="logit s_j")
ax_m.step(range(64), [s.m for s in steps], where="post", label="running max m (per key)")
ax_m.plot(block_ends, [steps[j].m for j in block_ends], "o", label=f"m after each block of {block_size}")
ax_m.set_title("Running maximum")
ax_m.set_xlabel("keys seen")
ax_m.set_ylabel("logit")
ax_m.legend(fontsize=10)
ax_d.plot(range(64), [s.denominator for s in steps], label="D = Σ exp(s_j − m)")
rescaled_at = [s.key_index for s in steps[1:] if s.rescale < 1]
ax_d.plot(rescaled_at, [steps[j].denominator for j in rescaled_at], "v", label="a new max rescaled D")
ax_d.set_title("Running denominator, relative to the running max")
ax_d.set_xlabel("keys seen")
ax_d.set_ylabel("D (dimensionless)")
ax_d.legend(fontsize=10)
plt.tight_layout()
plt.show()
print(f"the maximum changed {len(rescaled_at)} times in 64 keys; final D = {steps[-1].denominator:.4f}, "
      f"Σ exp(s − max s) = {torch.exp(row.double() - row.max()).sum().item():.4f}")

# %% [markdown]
# ## Exercise: one online-softmax step
#
# Write `step(m, numerator, denominator, score, value)` returning `(m_new, numerator_new, denominator_new)`
# for one new key. The checker replays the toy (to $10^{-12}$), compares every intermediate state on
# another sequence, and feeds rows with logits above 1000.

# %%
def step(m, numerator, denominator, score, value):
    ### BEGIN SOLUTION
    m_new = max(m, score)
    rescale = math.exp(m - m_new)  # exp(m_old − m_new) ≤ 1; exp(−inf) = 0 for the empty state
    weight = math.exp(score - m_new)
    return m_new, numerator * rescale + weight * value, denominator * rescale + weight
    ### END SOLUTION


# %%
from attention_lab.exercises.ch08 import check_online_step

check_online_step(step)

# %% [markdown]
# ## Summary
#
# * The toy's closed form and its streamed versions (plain N/D, and with the running max) agree to the
#   differences printed above — within $10^{-12}$.
# * Without the max, scores of 1000 give $N = D = \infty$ and NaN; with it, the same answer as the toy,
#   because softmax does not change when every score shifts by the same amount.
# * fp16 precisely: without the max, $e^s$ overflows in fp16 past the limit printed above (and in fp32 past
#   its own, larger one); with the max nothing overflows in either. The book's kernels subtract the max and
#   keep $m$, $\ell$ and the accumulator in fp32 — so fp16 inputs with scores past both limits come out
#   finite — and an fp16 $\ell$ would in any case stop counting at $2^{11}$ equal keys.
# * The rescale $e^{m_{old}-m_{new}}$ must multiply **both** the old numerator and the old denominator.
# * Blocks of any size — 1, 7, 16, the whole row — give the softmax to rounding error, masked keys and
#   huge logits included. The state per query is two numbers and one vector: $O(d)$, never $O(N)$.
#
# Chapter 09 puts this update inside a loop over tiles of Q, K and V.
