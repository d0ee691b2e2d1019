// Fused, tiled CPU softmax attention (docs/semantics.md §1), forward and backward, on dense, padded
// (key_padding_mask) and packed (cu_seqlens) batches (docs/semantics.md §5; see varlen.h).
// The optional `tau` (fp32 (B, Hq, Nq), empty = none) keeps key j for query i only where
// s_ij >= tau_i: top-K attention is this kernel plus a threshold (csrc/cpu/topk_attention.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "cpu/varlen.h"

namespace fastattn::cpu {

// -> out (B, Hq, Nq, Dv) in q's dtype, lse (B, Hq, Nq) fp32 (+inf on rows with no allowed key).
std::tuple<at::Tensor, at::Tensor> softmax_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, const at::Tensor& tau,
                                                             bool causal, double scale,
                                                             const RaggedArgs& ra = {});

// -> dq, dk, dv shaped and typed like q, k, v (dk, dv summed over each GQA group).
std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& tau, bool causal, double scale,
    const RaggedArgs& ra = {});

}  // namespace fastattn::cpu
