"""Element-wise ops: binary arithmetic with ggml's repeat broadcasting, scale, activations."""
from __future__ import annotations

import math

import numpy as np

from .registry import FLOAT, api, can_repeat, emit, need, need_dtype, numel, register, tile_to

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# -- binary --------------------------------------------------------------------------------
def _binary_infer(a, b):
    need_dtype(a, FLOAT, "a")
    need_dtype(b, FLOAT, "b")
    need(can_repeat(b.shape, a.shape),
         f"b {b.shape} cannot be repeated to a {a.shape} (each dim of a must be a multiple of b's)")
    return a.shape, a.dtype


def _binary(name, fn, sym):
    register(name, _binary_infer, lambda a, b: fn(a, tile_to(b, a.shape)),
             lambda out, ins: numel(out), f"a {sym} b; b is tiled to a's shape (ggml_repeat)", kind="arithmetic")


_binary("add", np.add, "+")
_binary("sub", np.subtract, "-")
_binary("mul", np.multiply, "*")
_binary("div", np.divide, "/")


def _commutative(op, a, b, name):
    # ggml repeats only its second operand; for + and * the larger one can go first.
    if a.shape != b.shape and can_repeat(a.shape, b.shape) and not can_repeat(b.shape, a.shape):
        a, b = b, a
    return emit(op, [a, b], name=name)


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
    return emit("sub", [a, b], name=name)


@api
def div(a, b, *, name=None):
    """a / b, b tiled to a's shape."""
    return emit("div", [a, b], name=name)


# -- scale -----------------------------------------------------------------------------------
def _scale_infer(x, *, s, b):
    need_dtype(x, FLOAT, "x")
    need(math.isfinite(s) and math.isfinite(b), f"scale {s} and bias {b} must be finite")
    return x.shape, x.dtype


register("scale", _scale_infer, lambda x, *, s, b: x * s + b,
         lambda out, ins, **a: 2 * numel(out), "s * x + b (ggml_scale_bias)", kind="arithmetic")


@api
def scale(x, s: float, b: float = 0.0, *, name=None):
    """s * x + b."""
    return emit("scale", [x], {"s": float(s), "b": float(b)}, name)


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


def _unary(op, ref, per, doc, kind="activation"):
    """Register unary op `op` (`per` FLOPs per element) and return its builder."""
    register(op, _unary_infer, ref, lambda out, ins: per * numel(out), doc, kind=kind)

    def builder(x, *, name=None):
        return emit(op, [x], name=name)

    builder.__name__ = builder.__qualname__ = op
    builder.__doc__ = doc
    return api(builder)


# Module-level names, so that readers, type checkers and `from .elementwise import gelu` see them.
neg = _unary("neg", np.negative, 1, "-x", kind="arithmetic")
sqr = _unary("sqr", np.square, 1, "x^2")
sqrt = _unary("sqrt", np.sqrt, 1, "sqrt(x)")
exp = _unary("exp", np.exp, 1, "exp(x)")
tanh = _unary("tanh", np.tanh, 1, "tanh(x)")
relu = _unary("relu", lambda x: np.maximum(x, 0), 1, "max(x, 0)")
sigmoid = _unary("sigmoid", _sigmoid, 4, "1 / (1 + exp(-x))")
silu = _unary("silu", lambda x: x * _sigmoid(x), 5, "x * sigmoid(x)")
gelu = _unary("gelu", lambda x: 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))), 8,
              "tanh-approximate GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))")
gelu_erf = _unary("gelu_erf", _gelu_erf, 8, "exact GELU: 0.5 x (1 + erf(x / sqrt(2)))")
gelu_quick = _unary("gelu_quick", lambda x: x * _sigmoid(1.702 * x), 6, "x * sigmoid(1.702 x) (CLIP's quick GELU)")
