"""The op registry and the public op builders (`from graphdsl import ops; ops.mul_mat(x, w)`).

The builders are imported by name, not copied in from `OPS_API` at import time, so that readers
and type checkers can follow `ops.gelu` to its definition; tests/ops/test_ops.py checks that every
builder in `OPS_API` is here.
"""
from . import const, conv, elementwise, linalg, reduce, rope, shape  # noqa: F401 - registers the ops
from .conv import conv_1d, conv_2d, pool_2d  # noqa: F401
from .elementwise import (add, div, exp, gelu, gelu_erf, gelu_quick, mul, neg, relu, scale,  # noqa: F401
                          sigmoid, silu, sqr, sqrt, sub, tanh)
from .linalg import flash_attn_ext, get_rows, linear, mul_mat, norm, rms_norm, soft_max  # noqa: F401
from .reduce import argmax, mean, sum_rows  # noqa: F401
from .registry import KINDS, OPS_API, REGISTRY, OpDef, ShapeError  # noqa: F401
from .rope import rope, rope_2d  # noqa: F401, F811 - the builder, as ops.rope always was; the module stays importable
from .shape import cast, concat, cont, pad, permute, repeat, reshape, transpose, view  # noqa: F401
