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
            torch.uint8: "u8", torch.int32: "i32"}


def pointer(dtype: torch.dtype) -> str:
    """Signature type of a pointer to `dtype` elements, e.g. '*fp16' (the plain data of aot_specs)."""
    return "*" + _TL_TYPE[dtype]


class Ragged:
    """How a launch covers the batch (CONTRACTS.md §1): `n_seq` program rows per head (B batch
    elements, or S packed sequences with cu_seqlens), the grid's tile extents `max_q` / `max_k`, and
    the kernels' pointer and constexpr arguments. Dense calls pass None / 0 for the five arguments.

        >>> rg = Ragged(q, k, None, cu_q, cu_k, 0, 0)        # doctest: +SKIP
        >>> kernel[(triton.cdiv(rg.max_q, BM), rg.n_seq * Hq)](..., *rg.pointers(dummy), ..., **rg.flags)
    """

    def __init__(self, q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        B, Nq, Nk = q.shape[0], q.shape[2], k.shape[2]
        if (cu_seqlens_q is None) != (cu_seqlens_k is None):
            raise ValueError("cu_seqlens_q and cu_seqlens_k must be given together (the op layer fills cu_seqlens_k)")
        self.kpm = None if key_padding_mask is None else key_padding_mask.contiguous().view(torch.uint8)
        self.cu_q, self.cu_k = cu_seqlens_q, cu_seqlens_k
        if cu_seqlens_q is None:
            self.n_seq, self.max_q, self.max_k = B, Nq, Nk
        else:
            self.n_seq = cu_seqlens_q.numel() - 1
            self.max_q = int(max_seqlen_q) or _longest(cu_seqlens_q)  # 0: not given
            self.max_k = int(max_seqlen_k) or _longest(cu_seqlens_k)
        self.flags = dict(HAS_KPM=self.kpm is not None, VARLEN=self.cu_q is not None)

    def pointers(self, dummy):
        """(KPM, CU_Q, CU_K) kernel arguments; `dummy` (any tensor on the device) stands for absent ones."""
        return tuple(dummy if t is None else t for t in (self.kpm, self.cu_q, self.cu_k))


def _longest(cu: torch.Tensor) -> int:
    return int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0


def finite(*xs: torch.Tensor):
    """The backward's operands with their non-finite entries replaced by 0 (CONTRACTS.md §2). The
    backward kernels weight every loaded query and key, with an exact 0 where a row may not read it,
    and 0 * NaN would carry a NaN into gradients of rows that never read it; rows that did read one
    have a NaN lse / den from the forward, which makes their gradients NaN."""
    return tuple(torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device)) for x in xs)


def softmax_delta(dout: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """delta_i = do_i . out_i (B, Hq, Nq) fp32, the row term of the softmax backward; 0 on NaN rows,
    whose probabilities carry the NaN already (a NaN delta would reach, through 0 * NaN, the keys
    those rows may not read)."""
    delta = (dout.float() * out.float()).sum(-1)
    return torch.where(torch.isfinite(delta), delta, 0.0).contiguous()


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
def sequence(s, Nq, Nk, CU_Q, CU_K, VARLEN: tl.constexpr):
    """Program row s (a batch element; with VARLEN a packed sequence) -> (b, q0, nq, k0, nk): its
    batch index in the tensors, its first query row and number of queries, its first key row and
    number of keys. Indices inside a sequence are local (i' = i + nk - nq restarts per sequence)."""
    if VARLEN:
        b = 0
        q0 = tl.load(CU_Q + s)
        nq = tl.load(CU_Q + s + 1) - q0
        k0 = tl.load(CU_K + s)
        nk = tl.load(CU_K + s + 1) - k0
    else:
        b = s
        q0 = 0
        nq = Nq
        k0 = 0
        nk = Nk
    return b, q0, nq, k0, nk


@triton.jit
def query_block(pid_m, bh, Hq, Hk, Nq, Nk, CU_Q, CU_K, BLOCK_M: tl.constexpr, VARLEN: tl.constexpr):
    """Query tile pid_m of program row bh (batch or sequence x query head) -> (b, h, offs_m (local
    query indices), rows (their rows in the (B * Hq * Nq) row stack), row_ok, nq, nk, kv_row0 (the
    row of key 0 of the sequence in the kv head h reads))."""
    h = bh % Hq
    b, q0, nq, k0, nk = sequence(bh // Hq, Nq, Nk, CU_Q, CU_K, VARLEN)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = (b * Hq + h) * Nq + q0 + offs_m
    return b, h, offs_m, rows, offs_m < nq, nq, nk, (b * Hk + h // (Hq // Hk)) * Nk + k0


@triton.jit
def key_block(pid_n, bhk, Hk, Nq, Nk, CU_Q, CU_K, KPM, BLOCK_N: tl.constexpr, VARLEN: tl.constexpr,
              HAS_KPM: tl.constexpr):
    """Key tile pid_n of program row bhk (batch or sequence x kv head) -> (b, hk, offs_n (local key
    indices), key_row0 (row of the sequence's key 0), key_ok (existing, unpadded keys), nq, nk, q0)."""
    hk = bhk % Hk
    b, q0, nq, k0, nk = sequence(bhk // Hk, Nq, Nk, CU_Q, CU_K, VARLEN)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = key_mask(KPM, b * Nk, offs_n, nk, HAS_KPM)
    return b, hk, offs_n, (b * Hk + hk) * Nk + k0, key_ok, nq, nk, q0


@triton.jit
def key_mask(KPM, kpm_row0, offs_n, nk, HAS_KPM: tl.constexpr):
    """(BN,) keys that exist (below nk) and, with a padding mask, are not padding."""
    ok = offs_n < nk
    if HAS_KPM:
        ok = ok & (tl.load(KPM + kpm_row0 + offs_n, mask=ok, other=0) != 0)
    return ok


@triton.jit
def any_key(key_ok, HAS_KPM: tl.constexpr):
    """Whether a key tile holds a key to visit (fully padded tiles are skipped; without a padding
    mask the loops never leave the keys, so always)."""
    if HAS_KPM:
        live = tl.max(key_ok.to(tl.int32), 0) > 0
    else:
        live = True
    return live


@triton.jit
def allowed(offs_m, offs_n, key_ok, offset, CAUSAL: tl.constexpr):
    """(BLOCK_M, BLOCK_N) mask: key exists and is not padding (key_ok), and causal: j <= i + offset
    (offset = nk - nq, bottom-right alignment)."""
    ok = key_ok[None, :]
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= offs_m[:, None] + offset)
    return ok


@triton.jit
def selected(ok, s, tau, HAS_TAU: tl.constexpr):
    """The allowed keys a row keeps: with a top-K threshold tau (BM,), those with s >= tau."""
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
def biased_scores(q, k, gs, slope, offs_m, offs_n, offset, HAS_ALIBI: tl.constexpr):
    """s = gamma*scale * q.k - slope*|i'-j| (q (BM, D), k (D, BN); gs = gamma*scale, a scalar or a
    (BM, BN) tile of per-element factors)."""
    s = tl.dot(q, k).to(tl.float32) * gs
    if HAS_ALIBI:
        s = s - slope * tl.abs((offs_m[:, None] + offset - offs_n[None, :]).to(tl.float32))
    return s


@triton.jit
def finite_rows(x):
    """x (R, C) with its non-finite entries zeroed, and per row 0.0, or NaN where the row had one
    (x * 0 is 0 exactly for finite x: no comparison that could drop a NaN)."""
    z = x * 0
    return tl.where(z == 0, x, 0), tl.sum(z.to(tl.float32), 1)


@triton.jit
def nan_where(x, ok):
    """Per row: NaN if x (R, C) is non-finite at some ok entry, else 0."""
    return tl.sum(tl.where(ok, x * 0.0, 0.0), 1)


@triton.jit
def poison(s, ok, vnan, sel, HAS_TAU: tl.constexpr):
    """The NaN policy of CONTRACTS.md §2 for one tile, as a per-row term added to the row's outputs
    (0, or NaN for a row that reads a non-finite value): a non-finite score at an allowed key (ok:
    q_i or k_j non-finite) or a non-finite v row (vnan (BN,) NaN) at a key of the row's support
    (sel: the selected keys with top-K, else the allowed ones)."""
    if HAS_TAU:
        bad = nan_where(s, ok) + nan_where(vnan[None, :], sel)
    else:
        bad = nan_where(s + vnan[None, :], ok)
    return bad


@triton.jit
def causal_key_end(pid_m, nk, offset, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """End of the keys query tile pid_m can see (causal: j <= i + offset for its last row)."""
    hi = nk
    if CAUSAL:
        hi = tl.minimum(nk, tl.maximum(0, (pid_m + 1) * BLOCK_M + offset))
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
def softmax_store(O, LSE, rows, row_ok, cols, ncols, m_i, l_i, acc, g, bad):
    """Epilogue of the online softmax: out = acc / l * g (g (BM,): a gate) and lse (natural log); rows
    without weight get out = 0 and lse = +inf; `bad` (poison's sum: 0 or NaN) is added to both. The
    output is written first (fewer live registers)."""
    has = l_i > 0.0
    store_tile(O, rows, row_ok, cols, ncols, acc / tl.where(has, l_i, 1.0)[:, None] * g[:, None] + bad[:, None])
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * LN2, float("inf"))
    tl.store(LSE + rows, lse + bad, mask=row_ok)


@triton.jit
def softmax_probs(s, lse, ok):
    """The backward's probabilities of one tile: exp(s - lse) where ok, else 0 (s in natural units).
    A NaN lse (a NaN row of the forward) makes its row NaN."""
    return tl.where(ok, tl.exp2((s - lse[:, None]) * LOG2E), 0.0)
