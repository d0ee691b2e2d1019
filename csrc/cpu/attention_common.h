// Shapes and masking shared by the fused CPU attention kernels (docs/semantics.md, conventions).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

#include "cpu/tile_gemm.h"

namespace fastattn::cpu {

struct Dims {
  int64_t B, Hq, Hk, Nq, Nk, D, Dv;
  // Element strides of k and v over batch and head, for kernels that take a KV-cache view (a
  // (B, Hk, pos, D) slice of a (B, Hk, max_len, D) buffer) without a copy; -1: contiguous.
  int64_t ksb = -1, ksh = -1, vsb = -1, vsh = -1;
  int64_t group() const { return Hq / Hk; }
  int64_t offset() const { return Nk - Nq; }  // i' = i + offset (bottom-right alignment)
  // Offset of the first key / value row of (batch b, kv head hk).
  int64_t k_off(int64_t b, int64_t hk) const { return ksb < 0 ? (b * Hk + hk) * Nk * D : b * ksb + hk * ksh; }
  int64_t v_off(int64_t b, int64_t hk) const { return vsb < 0 ? (b * Hk + hk) * Nk * Dv : b * vsb + hk * vsh; }
  int64_t k_off_bh(int64_t bhk) const { return k_off(bhk / Hk, bhk % Hk); }  // bhk = b * Hk + hk
  int64_t v_off_bh(int64_t bhk) const { return v_off(bhk / Hk, bhk % Hk); }
};

inline Dims dims_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return Dims{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
}

// Number of keys query row i may see (j < limit), before top-K: all, or i' + 1 when causal.
inline int64_t key_limit(const Dims& d, bool causal, int64_t i) {
  return causal ? std::clamp<int64_t>(i + d.offset() + 1, 0, d.Nk) : d.Nk;
}

// Masks one score row of a tile starting at key j0 with `cols` keys: beyond `limit` (causal) and
// below the top-K threshold *tau_row (when given) -> -inf.
inline void mask_row(float* srow, int64_t j0, int64_t cols, int64_t limit, const float* tau_row) {
  const int64_t lim = std::clamp<int64_t>(limit - j0, 0, cols);
  for (int64_t c = lim; c < cols; ++c) srow[c] = -kInf;
  if (tau_row != nullptr) {
    const float t = *tau_row;
    for (int64_t c = 0; c < lim; ++c) srow[c] = srow[c] >= t ? srow[c] : -kInf;
  }
}

// Shared input checks for the attention ops (TORCH_CHECK naming the offending argument): 4-D,
// contiguous, on one `device` type (the CPU kernels; the CUDA glue passes kCUDA), one float dtype,
// consistent shapes (GQA: Hq % Hk == 0), head dims in [1, 256]. With kv_rows_only, k and v need
// only contiguous (N, D) blocks per (batch, head): kernels that read them through Dims::k_off/v_off.
void check_attention_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            c10::DeviceType device = c10::DeviceType::CPU, bool kv_rows_only = false);

// For kernels that read k and v through Dims::k_off/v_off (a KV-cache view goes in uncopied): the
// checks above with kv_rows_only, and Dims carrying k's and v's batch/head strides. One call, so a
// relaxed check never comes without the strides that make it safe.
Dims check_kv_view_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// tau: empty, or a contiguous fp32 (B, Hq, Nq) tensor.
void check_tau(const char* op, const at::Tensor& tau, const at::Tensor& q);

// An fp32 (Hq,) per-head parameter (or, when `optional`, an empty tensor).
void check_head_param(const char* op, const char* name, const at::Tensor& t, int64_t Hq, bool optional);

}  // namespace fastattn::cpu
