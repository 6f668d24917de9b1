"""The model the attribution runs, and how it is left exactly as found.

``forward_func`` is an ``nn.Module``, a bound method of one, or a function that
runs one (``lambda x: model(x)["logits"]``, the Captum idiom for models with
dict outputs): :func:`owning_module` finds that module, which is then traced,
frozen and restored like a model passed directly.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Iterator, Optional

from torch import nn


def owning_module(forward_func: Callable) -> Optional[nn.Module]:
    """The ``nn.Module`` behind ``forward_func``, or None.

    The module itself, a bound method's owner, or the one module a function
    refers to (a closure variable or a global of its code). A function that
    refers to none, or to several, has no owner: it runs with hooks.
    """
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    if isinstance(owner, nn.Module):
        return owner
    try:
        names = inspect.getclosurevars(forward_func)
    except TypeError:  # a builtin, a functools.partial, a callable object
        return None
    found = {id(v): v for v in (*names.nonlocals.values(), *names.globals.values()) if isinstance(v, nn.Module)}
    return next(iter(found.values())) if len(found) == 1 else None


@contextlib.contextmanager
def frozen_model(forward_func: Callable) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; the exact prior state after.

    Every module's ``training`` flag and every parameter's ``requires_grad``
    flag are restored one by one, also when an exception escapes. A function
    with no owning module (see :func:`owning_module`) gets a global forward
    pre-hook that freezes each module it runs just before its first call.
    """
    model = owning_module(forward_func)
    saved: dict = {}
    handle = None
    if model is not None:
        _freeze(model, saved)
    else:

        def freeze_before_call(module, args):
            if id(module) not in saved:
                _freeze(module, saved)

        handle = nn.modules.module.register_module_forward_pre_hook(freeze_before_call)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
        for module, training, flags in saved.values():
            module.training = training
            for param, requires_grad in flags:
                param.requires_grad_(requires_grad)


def _freeze(root: nn.Module, saved: dict) -> None:
    """Put ``root`` and its submodules in eval mode without parameter gradients, noting their state."""
    for module in root.modules():
        if id(module) not in saved:
            flags = [(param, param.requires_grad) for param in module.parameters(recurse=False)]
            saved[id(module)] = (module, module.training, flags)
            for param, _ in flags:
                param.requires_grad_(False)
    root.eval()  # through ``train``, which some modules override
