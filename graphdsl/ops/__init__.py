"""The op registry and the public op builders (`from graphdsl import ops; ops.mul_mat(x, w)`)."""
from . import const, conv, elementwise, linalg, reduce, rope, shape  # noqa: F401 - registers the ops
from .conv import conv_1d, conv_2d, pool_2d  # noqa: F401
from .elementwise import add, div, mul, scale, sub  # noqa: F401
from .linalg import flash_attn_ext, get_rows, linear, mul_mat, norm, rms_norm, soft_max  # noqa: F401
from .reduce import argmax, mean, sum_rows  # noqa: F401
from .registry import OPS_API, REGISTRY, OpDef, ShapeError  # noqa: F401
from .rope import rope, rope_2d  # noqa: F401, F811 - the builder, as ops.rope always was; the module stays importable
from .shape import cast, concat, cont, pad, permute, repeat, reshape, transpose, view  # noqa: F401

globals().update({name: fn for name, fn in OPS_API.items() if name in elementwise.UNARY})
