// Portability macros (and the one division helper) for header-only math shared by the CPU and CUDA
// kernels.
#pragma once

#if defined(__CUDACC__)
#define FASTATTN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTATTN_HOST_DEVICE inline
#endif

namespace fastattn {

// a / b rounded to nearest in fp32 on host and device alike (nvcc's --use_fast_math would otherwise
// make device divisions approximate, and quantization levels and ramp boundaries differ from the
// reference's).
FASTATTN_HOST_DEVICE float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

}  // namespace fastattn
