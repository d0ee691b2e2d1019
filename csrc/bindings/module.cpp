// The Python module of one CPU variant of the build, fastattn._C (portable) or fastattn._C_avx512
// (setup.py names it; torch's build passes the last part as TORCH_EXTENSION_NAME). Importing it runs
// the static TORCH_LIBRARY_FRAGMENT(fastattn_C, m) registrations of csrc/bindings/<op>.cpp;
// itself it exposes only what the build holds.
#include <Python.h>

#include "../common/limits.h"

#define FASTATTN_STR_(x) #x
#define FASTATTN_STR(x) FASTATTN_STR_(x)
#define FASTATTN_CAT_(a, b) a##b
#define FASTATTN_CAT(a, b) FASTATTN_CAT_(a, b)

PyMODINIT_FUNC FASTATTN_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, FASTATTN_STR(TORCH_EXTENSION_NAME),
                               "fastattn kernels (torch.ops.fastattn_C)", -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
  // What this build holds (fastattn._ext.build_info): the instruction-set extensions the CPU
  // kernels were compiled to use (none in the portable variant: their portable C++ paths throughout),
  // and whether the CUDA kernels are in it.
  const char* cpu_features = ""
#ifdef __AVX512F__
                             " avx512f"
#endif
#ifdef __AVX512BW__
                             " avx512bw"
#endif
#ifdef __AVX512VNNI__
                             " avx512vnni"
#endif
#ifdef __AVX512BF16__
                             " avx512bf16"
#endif
      ;
#ifdef FASTATTN_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  // The kernels' limits (csrc/common/limits.h), which fastattn.dispatch reads rather than restates.
  if (PyModule_AddStringConstant(m, "cpu_features", cpu_features) < 0 ||
      PyModule_AddIntConstant(m, "with_cuda", with_cuda) < 0 ||
      PyModule_AddIntConstant(m, "max_head_dim", fastattn::kMaxHeadDim) < 0 ||
      PyModule_AddIntConstant(m, "max_topk_cpu", fastattn::kMaxTopkCpu) < 0 ||
      PyModule_AddObject(m, "tie_margin", PyFloat_FromDouble(fastattn::kTieMargin)) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
