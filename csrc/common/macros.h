// Portability macros for header-only math shared by the CPU and CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define FASTATTN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTATTN_HOST_DEVICE inline
#endif
