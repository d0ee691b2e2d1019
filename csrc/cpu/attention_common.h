// Shapes and masking shared by the fused CPU attention kernels (docs/semantics.md, conventions).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

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

// ---- Non-finite inputs (CONTRACTS §2) ----
// A row that may read a non-finite q_i, k_j (j allowed) or v_j (j in its support) is "poisoned": the
// kernels finish it as NaN (every Dv entry, and NaN row statistics, so that its gradients are NaN
// too). Every other row is exactly what it would be without those values. Hence: allowed scores are
// checked before masking (-inf is the mask marker, and a NaN would vanish in the threshold compare or
// a max instruction), and no P V product multiplies a masked key's non-finite v by its zero weight.

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// True when x[0, n) are all finite (x * 0 is 0 for a finite x, NaN for +-inf and NaN).
inline bool all_finite(const float* x, int64_t n) {
  float part[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) part[l] += x[c + l] * 0.0f;
  float z = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) z += part[l];
  for (; c < n; ++c) z += x[c] * 0.0f;
  return z == 0.0f;
}

// Masks one score row of a tile starting at key j0 with `cols` keys: keys at or beyond `limit`
// (causal), padded keys (keep[c] false, when `keep` is given) and keys below the top-K threshold
// *tau_row (when given) -> -inf. Returns whether the scores of the keys that causality and padding
// allow were all finite (checked before any masking).
inline bool mask_row(float* srow, int64_t j0, int64_t cols, int64_t limit, const float* tau_row,
                     const bool* keep = nullptr) {
  const int64_t lim = std::clamp<int64_t>(limit - j0, 0, cols);
  bool finite;
  if (keep == nullptr) {
    finite = all_finite(srow, lim);
  } else {
    float z = 0.0f;
    for (int64_t c = 0; c < lim; ++c) z += keep[c] ? srow[c] * 0.0f : 0.0f;
    finite = z == 0.0f;
    for (int64_t c = 0; c < lim; ++c) srow[c] = keep[c] ? srow[c] : -kInf;
  }
  for (int64_t c = lim; c < cols; ++c) srow[c] = -kInf;
  if (tau_row != nullptr) {
    const float t = *tau_row;
    for (int64_t c = 0; c < lim; ++c) srow[c] = srow[c] >= t ? srow[c] : -kInf;
  }
  return finite;
}

// bad <- the rows r < rows of a row-major tile (row length n, row stride ld) holding a non-finite value.
template <typename T>
inline void nonfinite_rows(const T* x, int64_t rows, int64_t n, int64_t ld, std::vector<int32_t>& bad) {
  bad.clear();
  std::vector<float> buf(std::is_same_v<T, float> ? 0 : n);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row;
    if constexpr (std::is_same_v<T, float>) {
      row = x + r * ld;
    } else {
      load_tile(x + r * ld, n, 1, n, buf.data(), n);
      row = buf.data();
    }
    if (!all_finite(row, n)) bad.push_back(static_cast<int32_t>(r));
  }
}

// A copy of a row-major fp32 tile (rows x n, packed) in `buf` with the rows listed in `bad` zeroed.
inline const float* zero_rows(const float* x, int64_t rows, int64_t n, const std::vector<int32_t>& bad, float* buf) {
  std::copy(x, x + rows * n, buf);
  for (const int32_t r : bad) std::fill(buf + r * n, buf + (r + 1) * n, 0.0f);
  return buf;
}

// poison[r] |= one of the keys in `bad` (tile columns) is still allowed in masked score row r.
inline void poison_rows(const float* S, int64_t ldS, int64_t rows, const std::vector<int32_t>& bad, uint8_t* poison) {
  for (int64_t r = 0; r < rows; ++r)
    for (const int32_t c : bad) poison[r] |= S[r * ldS + c] != -kInf;
}

// Backward tiles without non-finite rows: a finite row's gradient never multiplies a key it may
// not read (or a NaN row's q) by a zero weight. The rows of a NaN row of the forward get their NaN
// gradients from nan_row_grad instead. Returns the tile itself when it is all finite.
struct Sanitizer {
  std::vector<float> kc, vc, qc;
  std::vector<int32_t> bad;
  const float* k(const float* x, int64_t rows, int64_t n) { return run(x, rows, n, kc); }
  const float* v(const float* x, int64_t rows, int64_t n) { return run(x, rows, n, vc); }
  const float* q(const float* x, int64_t rows, int64_t n) { return run(x, rows, n, qc); }

 private:
  const float* run(const float* x, int64_t rows, int64_t n, std::vector<float>& buf) {
    if (all_finite(x, rows * n)) return x;
    nonfinite_rows(x, rows, n, n, bad);
    buf.resize(rows * n);
    return zero_rows(x, rows, n, bad, buf.data());
  }
};

// A backward task's key tile: keys [krow, krow + cols) of contiguous (B, Hk, Nk, D|Dv) k and v as fp32
// (converted when T is not float), non-finite rows zeroed (Sanitizer; `clean` also serves its q tiles).
struct KeyTile {
  std::vector<float> kbuf, vbuf;
  Sanitizer clean;
  const float *K = nullptr, *V = nullptr;
  KeyTile(int64_t max_cols, const Dims& d) : kbuf(max_cols * d.D), vbuf(max_cols * d.Dv) {}
  template <typename T>
  void load(const T* k, const T* v, int64_t krow, int64_t cols, const Dims& d) {
    K = clean.k(tile_ptr(k + krow * d.D, cols, d.D, kbuf.data()), cols, d.D);
    V = clean.v(tile_ptr(v + krow * d.Dv, cols, d.Dv, vbuf.data()), cols, d.Dv);
  }
};

// A backward score row of a NaN row of the forward: P and dS NaN for the keys c < allowed (causal)
// that exist (keep[c], when given), 0 for the others.
inline void nan_row_grad(float* p, float* ds, int64_t cols, int64_t allowed, const bool* keep = nullptr) {
  const int64_t lim = std::clamp<int64_t>(allowed, 0, cols);
  for (int64_t c = 0; c < cols; ++c) p[c] = ds[c] = c < lim && (keep == nullptr || keep[c]) ? kNaN : 0.0f;
}

template <typename T>
inline void fill_nan(T* dst, int64_t n) {
  std::fill(dst, dst + n, static_cast<T>(kNaN));
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
