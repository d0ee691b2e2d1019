// The Python module fastattn._C_cuda. Importing it (after fastattn._C, which defines the operators)
// runs the static TORCH_LIBRARY_IMPL(fastattn_C, CUDA, m) registrations of csrc/bindings/cuda/<op>.cpp.
#include <Python.h>

extern "C" PyObject* PyInit__C_cuda(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda", "fastattn's CUDA kernels (torch.ops.fastattn_C.*)",
                               -1, nullptr};
  return PyModule_Create(&module);
}
