"""Element-wise ops: binary arithmetic with ggml's repeat broadcasting, scale, activations."""
from __future__ import annotations

import math

import numpy as np

from .registry import FLOAT, api, can_repeat, need, need_dtype, numel, register, tile_to

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _emit(op, inputs, attrs=None, name=None):
    return inputs[0].graph.emit(op, inputs, attrs or {}, name)


# -- binary --------------------------------------------------------------------------------
def _binary_infer(a, b):
    need_dtype(a, FLOAT, "a")
    need_dtype(b, FLOAT, "b")
    need(can_repeat(b.shape, a.shape),
         f"b {b.shape} cannot be repeated to a {a.shape} (each dim of a must be a multiple of b's)")
    return a.shape, a.dtype


def _binary(name, fn, sym):
    register(name, _binary_infer, lambda a, b: fn(a, tile_to(b, a.shape)),
             lambda out, ins: numel(out), f"a {sym} b; b is tiled to a's shape (ggml_repeat)")


_binary("add", np.add, "+")
_binary("sub", np.subtract, "-")
_binary("mul", np.multiply, "*")
_binary("div", np.divide, "/")


def _commutative(op, a, b, name):
    # ggml repeats only its second operand; for + and * the larger one can go first.
    if a.shape != b.shape and can_repeat(a.shape, b.shape) and not can_repeat(b.shape, a.shape):
        a, b = b, a
    return _emit(op, [a, b], name=name)


@api
def add(a, b, *, name=None):
    """a + b, where b's shape must tile a's (or the reverse)."""
    return _commutative("add", a, b, name)


@api
def mul(a, b, *, name=None):
    """a * b, where b's shape must tile a's (or the reverse)."""
    return _commutative("mul", a, b, name)


@api
def sub(a, b, *, name=None):
    """a - b, b tiled to a's shape."""
    return _emit("sub", [a, b], name=name)


@api
def div(a, b, *, name=None):
    """a / b, b tiled to a's shape."""
    return _emit("div", [a, b], name=name)


# -- scale -----------------------------------------------------------------------------------
def _scale_infer(x, *, s, b):
    need_dtype(x, FLOAT, "x")
    need(math.isfinite(s) and math.isfinite(b), f"scale {s} and bias {b} must be finite")
    return x.shape, x.dtype


register("scale", _scale_infer, lambda x, *, s, b: x * s + b,
         lambda out, ins, **a: 2 * numel(out), "s * x + b (ggml_scale_bias)")


@api
def scale(x, s: float, b: float = 0.0, *, name=None):
    """s * x + b."""
    return _emit("scale", [x], {"s": float(s), "b": float(b)}, name)


# -- unary -----------------------------------------------------------------------------------
def _unary_infer(x):
    need_dtype(x, FLOAT, "x")
    return x.shape, x.dtype


def _erf(x):
    from scipy.special import erf  # noqa: PLC0415 - optional, exact
    return erf(x)


def _gelu_erf(x):
    try:
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    except ImportError:
        return 0.5 * x * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2.0)))


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free form


UNARY = {
    # name: (reference, flops per element, doc)
    "neg": (np.negative, 1, "-x"),
    "sqr": (np.square, 1, "x^2"),
    "sqrt": (np.sqrt, 1, "sqrt(x)"),
    "exp": (np.exp, 1, "exp(x)"),
    "tanh": (np.tanh, 1, "tanh(x)"),
    "relu": (lambda x: np.maximum(x, 0), 1, "max(x, 0)"),
    "sigmoid": (_sigmoid, 4, "1 / (1 + exp(-x))"),
    "silu": (lambda x: x * _sigmoid(x), 5, "x * sigmoid(x)"),
    "gelu": (lambda x: 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))), 8,
             "tanh-approximate GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))"),
    "gelu_erf": (_gelu_erf, 8, "exact GELU: 0.5 x (1 + erf(x / sqrt(2)))"),
    "gelu_quick": (lambda x: x * _sigmoid(1.702 * x), 6, "x * sigmoid(1.702 x) (CLIP's quick GELU)"),
}


def _make_unary(op, ref, per, doc):
    register(op, _unary_infer, ref, lambda out, ins, _p=per: _p * numel(out), doc)

    def builder(x, *, name=None):
        return _emit(op, [x], name=name)

    builder.__name__ = op
    builder.__doc__ = doc
    return api(builder)


for _op, (_ref, _per, _doc) in UNARY.items():
    globals()[_op] = _make_unary(_op, _ref, _per, _doc)
