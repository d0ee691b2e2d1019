"""Pieces shared by the Triton kernels: launcher helpers (host) and @triton.jit tile helpers.

Tiles are read from and written to row-major (rows, ncols) tensors: `ptr` points at a block's row 0
(e.g. Q + (b * H + h) * N * D) and `rows` are offsets from it, masked rows and columns >= ncols read as 0 and are not
written. Scores run in base 2 inside the softmax kernels (LOG2E folded into the exponent).
"""
import os

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

# The Triton kernels' limits, read by fastattn.dispatch.limits("triton").
MAX_HEAD_DIM = 256  # D and Dv (padded to 256 lanes at most)
MAX_TOPK = 128  # the threshold kernel's candidate list (tl.topk over K_PAD lanes)
# tau is lowered by TIE_MARGIN * max(1, |tau|) so that the key defining it survives when the
# attention kernel recomputes its score with another summation order; keys that close to tau are
# the near-ties docs/semantics.md §3 lets backends select differently. Same margin as csrc/common/limits.h.
TIE_MARGIN = 2e-5


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (kernels then run on CPU tensors, numerics only)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def upcast_dots(dtype: torch.dtype) -> bool:
    """The interpreter computes bf16 tl.dot wrongly: feed it fp32 operands there."""
    return interpreting() and dtype == torch.bfloat16


def block_d(d: int) -> int:
    """Head dims are padded to a power of two (>= 16 for tl.dot) and masked."""
    return max(16, triton.next_power_of_2(d))


# Triton's signature type names of the element types the kernels take.
_TL_TYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "i8",
            torch.int32: "i32"}


def pointer(dtype: torch.dtype) -> str:
    """Signature type of a pointer to `dtype` elements, e.g. '*fp16' (the plain data of aot_specs)."""
    return "*" + _TL_TYPE[dtype]


def require_dense(op: str, key_padding_mask, cu_seqlens_q, cu_seqlens_k) -> None:
    """Refuse (never ignore) a padding mask or packed sequences in a launcher that lacks them."""
    if key_padding_mask is not None or cu_seqlens_q is not None or cu_seqlens_k is not None:
        raise NotImplementedError(f"{op} (triton): key_padding_mask / cu_seqlens are not implemented yet")


# ----------------------------------------------------------------------------------------------
# @triton.jit helpers
# ----------------------------------------------------------------------------------------------

@triton.jit
def load_tile(ptr, rows, row_ok, cols, ncols, UPCAST: tl.constexpr):
    """(R, C) tile: rows `rows` (R,) where row_ok, columns `cols` (C,) below ncols; 0 elsewhere.
    UPCAST: as fp32 (the interpreter's bf16 dots)."""
    x = tl.load(ptr + rows[:, None] * ncols + cols[None, :], mask=row_ok[:, None] & (cols[None, :] < ncols),
                other=0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def load_tile_t(ptr, rows, row_ok, cols, ncols, UPCAST: tl.constexpr):
    """The same tile transposed, (C, R): a key block as the right operand of q @ k^T."""
    x = tl.load(ptr + rows[None, :] * ncols + cols[:, None], mask=row_ok[None, :] & (cols[:, None] < ncols),
                other=0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def store_tile(ptr, rows, row_ok, cols, ncols, x):
    """Write the (R, C) tile x (cast to ptr's element type) where load_tile would read."""
    tl.store(ptr + rows[:, None] * ncols + cols[None, :], x.to(ptr.dtype.element_ty),
             mask=row_ok[:, None] & (cols[None, :] < ncols))


@triton.jit
def query_heads(bh, Hq, Hk):
    """Program axis over (batch x query head) -> (b, h, kv head read by h)."""
    h = bh % Hq
    return bh // Hq, h, h // (Hq // Hk)


@triton.jit
def allowed(offs_m, offs_n, Nk, offset, s, tau, CAUSAL: tl.constexpr, HAS_TAU: tl.constexpr):
    """(BLOCK_M, BLOCK_N) mask: key exists (j < Nk), causal (j <= i + offset, offset = Nk - Nq) and
    s >= tau (the top-K threshold, when given)."""
    ok = offs_n[None, :] < Nk
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= offs_m[:, None] + offset)
    if HAS_TAU:
        ok = ok & (s >= tau[:, None])
    return ok


@triton.jit
def head_params(GAMMA, SLOPES, h, scale, HAS_ALIBI: tl.constexpr):
    """gamma_h * scale and the ALiBi slope of query head h (0 without ALiBi)."""
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(SLOPES + h)
    return tl.load(GAMMA + h) * scale, slope


@triton.jit
def biased_scores(q, k, gs, slope, offs_m, offs_n, Nk, offset, tau, CAUSAL: tl.constexpr,
                  HAS_ALIBI: tl.constexpr, HAS_TAU: tl.constexpr):
    """s = gamma*scale * q.k - slope*|i'-j| (q (BM, D), k (D, BN)) and its allowed mask."""
    s = tl.dot(q, k).to(tl.float32) * gs
    if HAS_ALIBI:
        s = s - slope * tl.abs((offs_m[:, None] + offset - offs_n[None, :]).to(tl.float32))
    return s, allowed(offs_m, offs_n, Nk, offset, s, tau, CAUSAL, HAS_TAU)


@triton.jit
def causal_key_end(pid_m, Nk, offset, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """End of the keys query tile pid_m can see (causal: j <= i + offset for its last row)."""
    hi = Nk
    if CAUSAL:
        hi = tl.minimum(Nk, tl.maximum(0, (pid_m + 1) * BLOCK_M + offset))
    return hi


@triton.jit
def causal_query_start(pid_n, offset, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """First query tile (a multiple of BLOCK_M) that can see key tile pid_n (causal: i >= j - offset)."""
    lo = 0
    if CAUSAL:
        lo = tl.maximum(0, pid_n * BLOCK_N - offset) // BLOCK_M * BLOCK_M
    return lo


@triton.jit
def softmax_step(m_i, l_i, s, w, WEIGHTED: tl.constexpr):
    """One key tile of the online softmax. s (BM, BN): scores in base 2, -inf where not allowed;
    p = 2^(s - m_new), times the weights w (BM, BN) with WEIGHTED. Returns (m_new, l_new, p, alpha),
    alpha the factor rescaling the accumulator."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    if WEIGHTED:
        p = w * p
    alpha = tl.exp2(m_i - m_safe)
    return m_new, l_i * alpha + tl.sum(p, 1), p, alpha


@triton.jit
def softmax_store(O, LSE, rows, row_ok, cols, ncols, m_i, l_i, acc, g):
    """Epilogue of the online softmax: out = acc / l * g (g (BM,): a gate) and lse (natural log); rows
    without weight get out = 0 and lse = +inf. The output is written first (fewer live registers)."""
    has = l_i > 0.0
    store_tile(O, rows, row_ok, cols, ncols, acc / tl.where(has, l_i, 1.0)[:, None] * g[:, None])
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * LN2, float("inf"))
    tl.store(LSE + rows, lse, mask=row_ok)


@triton.jit
def softmax_probs(s, lse, ok):
    """The backward's probabilities of one tile: exp(s - lse) where ok, else 0 (s in natural units)."""
    return tl.where(ok, tl.exp2((s - lse[:, None]) * LOG2E), 0.0)
