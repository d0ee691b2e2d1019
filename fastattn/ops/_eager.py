"""Eager calls of fastattn's custom ops that skip torch.library's Python layers when they have nothing to do.

A call of a `torch.library.custom_op` goes through an autograd wrapper, a redispatch and a
torch.compile guard around the body before it reaches the kernel: tens of microseconds, as much as
a whole decode step's kernel. `EagerOp` calls the op's body itself when nobody can observe the
difference (not compiling or tracing, no TorchDispatchMode or TorchFunctionMode such as
FakeTensorMode or FlopCounterMode, no functorch transform, plain tensors), and when a gradient is
needed, through a plain `torch.autograd.Function` built from the op's own setup_context and backward.
Anything else goes through the custom op, so torch.compile, opcheck, fake tensors and FLOP counters
see `fastattn::*` exactly as before.

    >>> fwd = EagerOp(softmax_attention_fwd)            # doctest: +SKIP
    >>> fwd.register_autograd(_backward, setup_context=_setup_context)
    >>> out, lse = fwd(q, k, v, False, 0.125, "cpu", None, None, None, 0, 0)
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch._C import _any_requires_grad, _is_torch_function_mode_enabled, _len_torch_dispatch_stack
from torch._C._functorch import peek_interpreter_stack

_PLAIN = (Tensor, torch.nn.Parameter)


def unobserved(args) -> bool:
    """Whether a call with these arguments can skip the dispatcher without anything seeing a difference."""
    if torch.compiler.is_compiling():  # first: dynamo cannot trace the mode queries below
        return False
    if _len_torch_dispatch_stack() or _is_torch_function_mode_enabled() or peek_interpreter_stack() is not None:
        return False
    for a in args:  # tensor subclasses (fake, functional, DTensor...) take the custom op
        if isinstance(a, Tensor) and type(a) not in _PLAIN:
            return False
    return True


class EagerOp:
    """A custom op (`torch.library.CustomOpDef`) with an eager shortcut; called with ALL its arguments positionally."""

    def __init__(self, op):
        self.op = op
        self.impl = op._init_fn  # the decorated body (what the op's CPU/CUDA kernel runs)
        self.function = None

    def register_autograd(self, backward, *, setup_context):
        """Register the op's autograd formula, and the same formula as the shortcut's autograd.Function."""
        self.op.register_autograd(backward, setup_context=setup_context)
        impl = self.impl

        def forward(ctx, *args):  # ctx-style: a separate setup_context costs an inspect.signature per call
            output = impl(*args)
            setup_context(ctx, args, output)
            return output
        self.function = type(f"Eager_{self.op._name}", (torch.autograd.Function,), {
            "forward": staticmethod(forward), "backward": staticmethod(backward)})

    def __call__(self, *args):
        if not unobserved(args):
            return self.op(*args)
        if torch.is_grad_enabled() and _any_requires_grad(*args):
            # without a registered formula the op itself raises its "no autograd formula" error
            return self.op(*args) if self.function is None else self.function.apply(*args)
        return self.impl(*args)
