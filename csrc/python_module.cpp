// Makes `import pyprune_fast._C` load this library (and so run its TORCH_LIBRARY registrations).
// It defines no Python functions: every op is reached through torch.ops.pyprune_fast.
// Only the Python build compiles this file; the CMake library for C++ users leaves it out.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
