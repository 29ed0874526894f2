"""Outputs as plain data: what a kernel may send the grader, and nothing else.

An exercise's outputs travel from the learner's kernel to the grader as JSON built from tensors,
numbers, strings, bytes, ``None``, lists, tuples and dicts of these. Nothing is pickled, so nothing
the kernel sends can run code in the grader; :func:`decode` bounds the depth, and the grader drops
a reply larger than :data:`MAX_BYTES` as it arrives (``gptcourse.grade``).

>>> decode(encode({"probs": torch.tensor([0.25, 0.75]), "k": (1, 2)}))
{'probs': tensor([0.2500, 0.7500]), 'k': (1, 2)}
"""

from __future__ import annotations

import math
from typing import Any

import torch

MAX_BYTES = 64 * 2**20  # a kernel's reply larger than this is refused
MAX_DEPTH = 32
_DTYPES = {
    str(d): d
    for d in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}
_TAGS = ("__tensor__", "__tuple__", "__dict__", "__bytes__", "__float__")


class ValueFormatError(ValueError):
    """A value that is not plain data, or a reply that is not well formed."""


def encode(value: Any, _depth: int = 0) -> Any:
    """``value`` as JSON-ready data; raises :class:`ValueFormatError` (naming the type) otherwise."""
    if _depth > MAX_DEPTH:
        raise ValueFormatError(f"nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):  # JSON has no NaN or infinity: tag those
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if str(t.dtype) not in _DTYPES:
            raise ValueFormatError(f"a tensor of dtype {t.dtype} cannot be graded")
        data = t.float().flatten().tolist() if t.dtype in (torch.float16, torch.bfloat16) else t.flatten().tolist()
        return {
            "__tensor__": str(t.dtype),
            "shape": list(t.shape),
            "data": [encode(x, _depth + 1) for x in data] if t.is_floating_point() else data,
        }
    if isinstance(value, bytes):
        return {"__bytes__": value.hex()}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, _depth + 1) for v in value]}
    if isinstance(value, list):
        return [encode(v, _depth + 1) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[encode(k, _depth + 1), encode(v, _depth + 1)] for k, v in value.items()]}
    raise ValueFormatError(
        f"a {type(value).__module__}.{type(value).__qualname__} cannot be graded: return "
        "tensors, numbers, strings, bytes, lists, tuples or dicts of these"
    )


def decode(data: Any, _depth: int = 0) -> Any:
    """The value :func:`encode` made ``data`` from; :class:`ValueFormatError` if it is malformed."""
    if _depth > MAX_DEPTH:
        raise ValueFormatError(f"nested more than {MAX_DEPTH} levels deep")
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode(v, _depth + 1) for v in data]
    if not isinstance(data, dict) or len(data) == 0 or not set(data) & set(_TAGS):
        raise ValueFormatError(f"unexpected {type(data).__name__} in a reply")
    if "__float__" in data:
        text = data["__float__"]
        if text not in ("nan", "inf", "-inf"):
            raise ValueFormatError(f"bad float {text!r}")
        return float(text)
    if "__bytes__" in data:
        return bytes.fromhex(str(data["__bytes__"]))
    if "__tuple__" in data:
        return tuple(decode(v, _depth + 1) for v in _list(data["__tuple__"]))
    if "__dict__" in data:
        out = {}
        for pair in _list(data["__dict__"]):
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueFormatError("a dict entry is not a pair")
            key = decode(pair[0], _depth + 1)
            try:
                out[key] = decode(pair[1], _depth + 1)
            except TypeError as err:  # an unhashable key
                raise ValueFormatError(f"bad dict key: {err}") from None
        return out
    dtype = _DTYPES.get(data["__tensor__"])
    shape = data.get("shape")
    if dtype is None or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueFormatError("bad tensor header")
    values = [decode(v, _depth + 1) for v in _list(data.get("data"))]
    if math.prod(shape) != len(values) or not all(isinstance(v, (bool, int, float)) for v in values):
        raise ValueFormatError("tensor data does not match its shape")
    return (
        torch.tensor(values, dtype=torch.float64 if dtype in (torch.float16, torch.bfloat16) else dtype)
        .reshape(shape)
        .to(dtype)
    )


def _list(data: Any) -> list:
    if not isinstance(data, list):
        raise ValueFormatError("expected a list")
    return data
