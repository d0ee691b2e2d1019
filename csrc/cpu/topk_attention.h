// Top-K attention on the CPU (docs/semantics.md §3): the per-row threshold tau (shared with
// relu_attention(topk=K)), then the fused softmax kernels restricted to s >= tau.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "cpu/varlen.h"

namespace fastattn::cpu {

// tau (B, Hq, Nq) fp32: the K-th largest s_ij = gamma_h*scale*q_i.k_j - slope_h*|i'-j| over allowed j
// (repeats counted), -inf where fewer than K keys are allowed. No Nq x Nk buffer: each row streams
// its scores through a bounded candidate buffer; short query blocks against long key sequences
// (decoding) split the keys across threads and merge the per-split candidates.
at::Tensor topk_attention_threshold_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& gamma,
                                        const at::Tensor& alibi_slopes, bool causal, double scale, int64_t topk,
                                        const RaggedArgs& ra = {});

// Fused top-K softmax attention forward: the selection above, then a softmax over each row's kept
// keys (s >= tau, scores from the selection GEMM) gathered by index: out (B, Hq, Nq, Dv), lse (+inf
// on rows with no allowed key) and tau, for the tau-masked backward (softmax_attention_bwd_cpu).
// Cost: the Q K^T GEMM + O(Nq * K * Dv), instead of a second dense pass.
std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                      const at::Tensor& v, int64_t topk, bool causal,
                                                                      double scale, const RaggedArgs& ra = {});

}  // namespace fastattn::cpu
