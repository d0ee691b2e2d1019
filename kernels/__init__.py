"""Triton kernels of fastattn, installed as the subpackage `fastattn.kernels`.

One module per op (`<op>.py`) with @triton.jit `<op>_*_kernel` functions, host launchers
`<op>_fwd` / `<op>_bwd` taking the same arguments as the C++ ops, and `aot_specs(dtype, head_dim)`
describing the default GPU configurations as plain data (signature type strings from
`_common.pointer`) for the ahead-of-time compile report (bench/compile_report.py). Kernels import
nothing of fastattn. Under TRITON_INTERPRET=1 they run on CPU tensors (numerics only).
"""
