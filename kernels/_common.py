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


def tile_config(D: int, Dv: int, dtype: torch.dtype, table) -> tuple:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of a kernel module's default GPU configurations
    `table`: ((largest padded head dim, config for 2-byte elements, config for fp32), ...) in
    increasing head dims; under the interpreter one small config (small blocks run fastest there).

        >>> tile_config(64, 64, torch.float16, ((64, (128, 64, 4, 3), (64, 64, 4, 2)),))  # doctest: +SKIP
        (128, 64, 4, 3)
    """
    if interpreting():
        return 16, 32, 4, 1
    dmax = max(block_d(D), block_d(Dv))
    for bound, half, single in table:
        if dmax <= bound:
            return single if dtype == torch.float32 else half
    raise ValueError(f"head dims D={D}, Dv={Dv} exceed the Triton kernels' maximum of {MAX_HEAD_DIM}")


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


def problem_shape(q, k, v):
    """(B, Hq, Hk, Nq, Nk, D, Dv) of a call's q (B,Hq,Nq,D), k (B,Hk,Nk,D), v (B,Hk,Nk,Dv)."""
    B, Hq, Nq, D = q.shape
    return B, Hq, k.shape[1], Nq, k.shape[2], D, v.shape[3]


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
def query_tile(Q, Hq, Hk, Nq, Nk, D, CU_Q, CU_K, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_DV: tl.constexpr, VARLEN: tl.constexpr, UPCAST: tl.constexpr):
    """The query tile of a program with ids (tile pid_m, batch or sequence x query head h) and its q
    rows -> (pid_m, b, h, offs_m (local query indices), rows (their rows in the (B * Hq * Nq) row
    stack), row_ok, nq, nk, kv_row0 (the row of key 0 of the sequence in the kv head h reads),
    offs_d, q (BLOCK_M, BLOCK_D)). With VARLEN a tile past its sequence's end has no row: the kernel
    returns before any work (`if pid_m * BLOCK_M >= nq`)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    h = bh % Hq
    b, q0, nq, k0, nk = sequence(bh // Hq, Nq, Nk, CU_Q, CU_K, VARLEN)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = (b * Hq + h) * Nq + q0 + offs_m
    row_ok = offs_m < nq
    offs_d = tl.arange(0, BLOCK_D)
    q = load_tile(Q, rows, row_ok, offs_d, D, UPCAST)
    kv_row0 = (b * Hk + h // (Hq // Hk)) * Nk + k0
    return pid_m, b, h, offs_m, rows, row_ok, nq, nk, kv_row0, offs_d, tl.arange(0, BLOCK_DV), q


@triton.jit
def key_tile(K, V, KPM, Hk, Nq, Nk, D, Dv, CU_Q, CU_K, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_DV: tl.constexpr, VARLEN: tl.constexpr, HAS_KPM: tl.constexpr, UPCAST: tl.constexpr):
    """The key tile of a dK/dV program with ids (tile pid_n, batch or sequence x kv head hk) -> (pid_n,
    b, hk, offs_n (local key indices), key_row0 (row of the sequence's key 0), key_ok (existing,
    unpadded keys), nq, nk, q0, offset (nk - nq: causal j <= i + offset), offs_d, offs_dv, k (BLOCK_N,
    BLOCK_D), v (BLOCK_N, BLOCK_DV), and the zeroed fp32 accumulators dk, dv of the same shapes). With
    VARLEN a tile past its sequence's end returns before any work, as query_tile's."""
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    hk = bhk % Hk
    b, q0, nq, k0, nk = sequence(bhk // Hk, Nq, Nk, CU_Q, CU_K, VARLEN)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = key_mask(KPM, b * Nk, offs_n, nk, HAS_KPM)
    key_row0 = (b * Hk + hk) * Nk + k0
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k, v = load_kv(K, V, key_row0, offs_n, key_ok, offs_d, D, offs_dv, Dv, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    return pid_n, b, hk, offs_n, key_row0, key_ok, nq, nk, q0, nk - nq, offs_d, offs_dv, k, v, dk, dv


@triton.jit
def load_kv(K, V, row0, offs_n, key_ok, offs_d, D, offs_dv, Dv, UPCAST: tl.constexpr):
    """k (BN, BLOCK_D) and v (BN, BLOCK_DV) of keys offs_n (where key_ok) of a sequence whose key 0
    is row row0."""
    return (load_tile(K + row0 * D, offs_n, key_ok, offs_d, D, UPCAST),
            load_tile(V + row0 * Dv, offs_n, key_ok, offs_dv, Dv, UPCAST))


@triton.jit
def keys_at(KPM, kpm_row0, start_n, nk, BLOCK_N: tl.constexpr, HAS_KPM: tl.constexpr):
    """Key tile starting at start_n of a key loop -> (offs_n, key_ok) (see key_mask)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    return offs_n, key_mask(KPM, kpm_row0, offs_n, nk, HAS_KPM)


@triton.jit
def query_rows(Q, DO, q_row0, start_m, nq, offs_d, D, offs_dv, Dv, BLOCK_M: tl.constexpr, UPCAST: tl.constexpr):
    """Query tile starting at start_m of a dK/dV kernel's query loop over one head (its row 0 at
    q_row0) -> (offs_m, row_ok, q, do)."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_ok = offs_m < nq
    return (offs_m, row_ok, load_tile(Q + q_row0 * D, offs_m, row_ok, offs_d, D, UPCAST),
            load_tile(DO + q_row0 * Dv, offs_m, row_ok, offs_dv, Dv, UPCAST))


@triton.jit
def query_end(key_ok, nq, HAS_KPM: tl.constexpr):
    """End of the queries a dK/dV key tile visits: all nq, none for a fully padded tile."""
    q_end = nq
    if HAS_KPM:
        q_end = tl.where(any_key(key_ok, HAS_KPM), nq, 0)
    return q_end


@triton.jit
def store_kv_grads(DK, DV, key_row0, offs_n, nk, key_ok, offs_d, D, offs_dv, Dv, dk, dv):
    """Write a key tile's dk, dv (exact zeros for padded keys)."""
    store_tile(DK + key_row0 * D, offs_n, offs_n < nk, offs_d, D, tl.where(key_ok[:, None], dk, 0.0))
    store_tile(DV + key_row0 * Dv, offs_n, offs_n < nk, offs_dv, Dv, tl.where(key_ok[:, None], dv, 0.0))


@triton.jit
def row_tau(TAU, rows, row_ok, HAS_TAU: tl.constexpr):
    """The top-K threshold of query rows `rows` (+inf on masked rows; 0, unused, without one)."""
    tau = tl.zeros(rows.shape, dtype=tl.float32)
    if HAS_TAU:
        tau = tl.load(TAU + rows, mask=row_ok, other=float("inf"))
    return tau


@triton.jit
def softmax_row_stats(LSE, DELTA, TAU, rows, row_ok, HAS_TAU: tl.constexpr):
    """The softmax backward's lse, delta and tau (when given) of query rows `rows` (+inf / 0 / +inf on
    masked rows)."""
    lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
    return lse, delta, row_tau(TAU, rows, row_ok, HAS_TAU)


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
