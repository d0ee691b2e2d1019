"""Pieces every reference shares: GQA expansion, the bottom-right causal mask, precision policy."""
import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else accumulates in fp32 (docs/semantics.md: accumulate in fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def expand_kv(k: torch.Tensor, Hq: int) -> torch.Tensor:
    """(B, Hk, N, D) -> (B, Hq, N, D): query head h reads kv head h // (Hq // Hk)."""
    Hk = k.shape[1]
    return k if Hk == Hq else k.repeat_interleave(Hq // Hk, dim=1)


def distance(Nq: int, Nk: int, device) -> torch.Tensor:
    """x_ij = i' - j with i' = i + (Nk - Nq) (bottom-right alignment). Shape (Nq, Nk), int64."""
    i = torch.arange(Nq, device=device).unsqueeze(1) + (Nk - Nq)
    j = torch.arange(Nk, device=device).unsqueeze(0)
    return i - j


def allowed_mask(Nq: int, Nk: int, causal: bool, device) -> torch.Tensor:
    """(Nq, Nk) bool: key j allowed for query i (j <= i' when causal)."""
    if not causal:
        return torch.ones(Nq, Nk, dtype=torch.bool, device=device)
    return distance(Nq, Nk, device) >= 0


def scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * q k^T in the accumulation dtype. q (B, Hq, Nq, D), k (B, Hq, Nk, D) -> (B, Hq, Nq, Nk).

    The product runs in the input dtype (as a kernel's tensor-core GEMM would take its operands)
    and is upcast before anything else happens to it.
    """
    acc = compute_dtype(q.dtype)
    return torch.matmul(q, k.transpose(-1, -2)).to(acc) * scale


def weighted_sum(p: torch.Tensor, v: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """sum_j p_ij v_j with p rounded to v's dtype first (what a fused kernel feeds its PV GEMM)."""
    acc = compute_dtype(v.dtype)
    return torch.matmul(p.to(v.dtype), v).to(acc).to(out_dtype)
