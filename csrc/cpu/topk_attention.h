// Top-K attention on the CPU (SPEC.md §3): the per-row threshold tau (shared with
// relu_attention(topk=K)), then the fused softmax kernels restricted to s >= tau.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastattn::cpu {

// tau (B, Hq, Nq) fp32: the K-th largest s_ij = gamma_h*scale*q_i.k_j - slope_h*|i'-j| over allowed j
// (repeats counted), -inf where fewer than K keys are allowed. No Nq x Nk buffer: each row streams
// its scores through a bounded candidate buffer; short query blocks against long key sequences
// (decoding) split the keys across threads and merge the per-split candidates.
at::Tensor topk_attention_threshold_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& gamma,
                                        const at::Tensor& alibi_slopes, bool causal, double scale, int64_t topk);

}  // namespace fastattn::cpu
