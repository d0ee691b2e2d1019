// The Python module fastattn._C. Importing it runs the static TORCH_LIBRARY_FRAGMENT(fastattn_C, m)
// registrations of csrc/bindings/<op>.cpp; it exposes nothing to Python itself.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastattn kernels (torch.ops.fastattn_C)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
