// Helpers shared by the torch-free CUDA kernels: dtype conversion to/from fp32, int64 min/max, a
// warp all-reduce (device); the dtype and head-dim-slot dispatch of the launchers (host).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace fastattn::cuda {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Host: f(T{}) with T the element type of the launchers' dtype code (0 float32, 1 float16,
// 2 bfloat16); any other code is cudaErrorInvalidValue.
template <typename F>
cudaError_t by_dtype(int dtype, F&& f) {
  switch (dtype) {
    case 0: return f(float{});
    case 1: return f(__half{});
    case 2: return f(__nv_bfloat16{});
    default: return cudaErrorInvalidValue;
  }
}

// Host: f(std::integral_constant<int, S>{}) with S the 32-lane slots per row covering max(D, Dv)
// (2, 4 or 8: head dims up to 64, 128, 256), the kernels' register-array size.
template <typename F>
void by_slots(int64_t D, int64_t Dv, F&& f) {
  const int64_t dmax = D > Dv ? D : Dv;
  if (dmax <= 64) f(std::integral_constant<int, 2>{});
  else if (dmax <= 128) f(std::integral_constant<int, 4>{});
  else f(std::integral_constant<int, 8>{});
}

}  // namespace fastattn::cuda
