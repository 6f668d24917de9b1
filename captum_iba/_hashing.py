"""One fingerprint of named tensors, shared by the model cache and the attribution store."""

from __future__ import annotations

import hashlib
from typing import Mapping

import torch


def tensor_digest(tensors: Mapping[str, torch.Tensor], prefix: str = "") -> str:
    """SHA-256 (hex) of ``prefix`` and the named tensors: names, dtypes, shapes and bytes, by sorted name.

    Parameters
    ----------
    tensors : mapping of str to Tensor
        E.g. a state dict; moved to the CPU, never changed.
    prefix : str
        Text hashed first (metadata that belongs to the fingerprint).

    Returns
    -------
    str
        64 hexadecimal digits; equal tensors give equal digests on any device.
    """
    sha = hashlib.sha256(prefix.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        sha.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()
