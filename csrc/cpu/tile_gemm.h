// Tile-level building blocks for the fused CPU kernels: row-major GEMMs on fp32 / bf16 tiles,
// a vectorizable exp, and loading (B, H, N, D) tiles of any dtype into fp32 scratch.
//
// GEMMs go straight to the BLAS that torch's CPU library carries and exports (MKL on x86 builds:
// sgemm_ and cblas_gemm_bf16bf16f32), the same routines ATen's own CPU flash-attention kernel
// reaches through at::native::cpublas, whose float overloads are not exported to extensions.
// All matrices here are ROW-major.
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

extern "C" {
// Fortran BLAS (column-major), LP64.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
// MKL: bf16 x bf16 -> fp32 (CBLAS: layout 101 = row-major, trans 111 = no, 112 = yes).
void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                            const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta, float* c, int ldc);
}

namespace fastattn::cpu {

// Row-major C[M x N] = alpha * op(A) * op(B) + beta * C, issued to column-major BLAS as
// C^T = op(B)^T op(A)^T (a row-major R x C matrix with leading dim ld is column-major C x R).
inline void gemm_rowmajor(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const char tA = ta ? 'T' : 'N', tB = tb ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
  sgemm_(&tB, &tA, &m, &n, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
}

// C[M x N] = alpha * A[M x K] * B[K x N] + beta * C
inline void gemm_nn(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_rowmajor(false, false, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// C[M x N] = alpha * A[M x K] * B^T + beta * C   (B row-major N x K, e.g. a K tile for Q K^T)
inline void gemm_nt(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_rowmajor(false, true, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// C[M x N] = alpha * A^T * B + beta * C   (A row-major K x M, B row-major K x N; e.g. P^T dO)
inline void gemm_tn(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_rowmajor(true, false, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// bf16 operands, fp32 accumulation and output (AVX512-BF16 in MKL): C = alpha op(A) op(B) + beta C.
inline void gemm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const c10::BFloat16* A,
                      int64_t lda, const c10::BFloat16* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_gemm_bf16bf16f32(101, ta ? 112 : 111, tb ? 112 : 111, static_cast<int>(M), static_cast<int>(N),
                         static_cast<int>(K), alpha, reinterpret_cast<const uint16_t*>(A), static_cast<int>(lda),
                         reinterpret_cast<const uint16_t*>(B), static_cast<int>(ldb), beta, C,
                         static_cast<int>(ldc));
}

// exp(x): ~2 ulp over [-87.3, 88.3]; exactly 0 below -87.3 (so exp(-inf) == 0 for masked keys).
// Written as straight-line float code so GCC vectorizes loops calling it (-O3 -march=native).
inline float fast_exp(float x) {
  const bool underflow = x < -87.3f;  // includes -inf (masked scores): exactly 0
  x = underflow ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float t = x * 1.44269504088896341f;  // x * log2(e)
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  const float f = t - n;  // in [-0.5, 0.5]
  // 2^f on [-0.5, 0.5]: degree-6 polynomial (Taylor of e^{f ln2}, relative error < 3e-8).
  float p = 1.5403530393381609e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += static_cast<int32_t>(n) << 23;
  float r;
  std::memcpy(&r, &bits, 4);
  return underflow ? 0.0f : r;
}

// Row reductions written with kLanes independent partial results, so GCC vectorizes them without
// -ffast-math (a plain `sum += x` loop is a serial dependency chain it must not reorder).
constexpr int64_t kLanes = 16;

inline float row_max(const float* x, int64_t n) {
  float part[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) part[l] = -std::numeric_limits<float>::infinity();
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) part[l] = part[l] > x[c + l] ? part[l] : x[c + l];
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t l = 0; l < kLanes; ++l) m = m > part[l] ? m : part[l];
  for (; c < n; ++c) m = m > x[c] ? m : x[c];
  return m;
}

inline float row_sum(const float* x, int64_t n) {
  float part[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) part[l] += x[c + l];
  float sum = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) sum += part[l];
  for (; c < n; ++c) sum += x[c];
  return sum;
}

// x[c] <- exp(x[c] - shift) in place; returns the sum of the new values.
inline float exp_shift_sum(float* x, int64_t n, float shift) {
  float part[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) {
      const float e = fast_exp(x[c + l] - shift);
      x[c + l] = e;
      part[l] += e;
    }
  float sum = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) sum += part[l];
  for (; c < n; ++c) {
    x[c] = fast_exp(x[c] - shift);
    sum += x[c];
  }
  return sum;
}

inline void scale_row(float* x, int64_t n, float a) {
  for (int64_t c = 0; c < n; ++c) x[c] *= a;
}

// dst[r, c] = float(src[r * ld + c]) for an rows x cols tile; fp32 input needs no copy (see tile_ptr).
template <typename T>
inline void load_tile(const T* src, int64_t ld, int64_t rows, int64_t cols, float* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * ld;
    float* d = dst + r * ldd;
    for (int64_t c = 0; c < cols; ++c) d[c] = static_cast<float>(s[c]);
  }
}

// A contiguous fp32 view of a tile: the source itself for float, else converted into `scratch`.
template <typename T>
inline const float* tile_ptr(const T* src, int64_t rows, int64_t cols, float* scratch) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    load_tile(src, cols, rows, cols, scratch, cols);
    return scratch;
  }
}

template <typename T>
inline void store_row(const float* src, int64_t n, T* dst) {
  for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<T>(src[c]);
}

constexpr float kInf = std::numeric_limits<float>::infinity();

}  // namespace fastattn::cpu

namespace fastattn::cpu {

// Calls f(T{}) with T = float, c10::Half or c10::BFloat16 for the tensor dtype (the dtypes the
// fused kernels take); anything else is a TORCH_CHECK error naming `what`.
template <typename F>
inline void dispatch_float_types(at::ScalarType dtype, const char* what, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(c10::Half{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, what, ": dtype must be float32, float16 or bfloat16, got ", dtype);
  }
}

}  // namespace fastattn::cpu
