"""
ggml op builders (ggml ne order).
"""
from __future__ import annotations
import collections.abc
import graphdsl._ggml
import typing
__all__: list[str] = ['add', 'argmax', 'cast', 'concat', 'cont', 'div', 'exp', 'flash_attn_ext', 'gelu', 'gelu_erf', 'gelu_quick', 'get_rows', 'im2col', 'mean', 'mul', 'mul_mat', 'mul_mat_set_prec_f32', 'neg', 'norm', 'pad_ext', 'permute', 'pool_2d', 'relu', 'repeat_4d', 'reshape_4d', 'rms_norm', 'rope_ext', 'rope_multi', 'scale_bias', 'sigmoid', 'silu', 'soft_max_ext', 'sqr', 'sqrt', 'sub', 'sum_rows', 'tanh', 'transpose', 'view_4d']
def add(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, b: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    a + b, b repeated to a's shape
    """
def argmax(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    argmax over ne0 of a 2-D tensor -> i32 [ne1]
    """
def cast(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, type: typing.SupportsInt | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    ...
def concat(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, b: graphdsl._ggml.Tensor, dim: typing.SupportsInt | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    ...
def cont(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    contiguous copy
    """
def div(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, b: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    a / b, b repeated to a's shape
    """
def exp(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    exp(x)
    """
def flash_attn_ext(ctx: graphdsl._ggml.Context, q: graphdsl._ggml.Tensor, k: graphdsl._ggml.Tensor, v: graphdsl._ggml.Tensor, mask: graphdsl._ggml.Tensor | None, scale: typing.SupportsFloat | typing.SupportsIndex, max_bias: typing.SupportsFloat | typing.SupportsIndex, softcap: typing.SupportsFloat | typing.SupportsIndex, prec_f32: bool) -> graphdsl._ggml.Tensor:
    """
    fused attention; result ne = [d_v, n_head, n_q, batch]
    """
def gelu(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    tanh-approximate GELU (f16 table on CPU)
    """
def gelu_erf(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    exact GELU, 0.5 x (1 + erf(x / sqrt 2))
    """
def gelu_quick(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    x * sigmoid(1.702 x) (f16 table on CPU)
    """
def get_rows(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, b: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    rows of a (any type) picked by i32 indices b -> f32
    """
def im2col(ctx: graphdsl._ggml.Context, k: graphdsl._ggml.Tensor, x: graphdsl._ggml.Tensor, s0: typing.SupportsInt | typing.SupportsIndex, s1: typing.SupportsInt | typing.SupportsIndex, p0: typing.SupportsInt | typing.SupportsIndex, p1: typing.SupportsInt | typing.SupportsIndex, d0: typing.SupportsInt | typing.SupportsIndex, d1: typing.SupportsInt | typing.SupportsIndex, is_2d: bool, dst_type: typing.SupportsInt | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    """
    unfold patches; dst_type f16 is ggml's fast path, f32 keeps full precision
    """
def mean(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    mean over ne0 -> ne0 = 1
    """
def mul(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, b: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    a * b, b repeated to a's shape
    """
def mul_mat(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, b: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    ggml_mul_mat(a[k, n], b[k, m]) -> [n, m]
    """
def mul_mat_set_prec_f32(t: graphdsl._ggml.Tensor) -> None:
    """
    accumulate this product in f32 (GGML_PREC_F32); CUDA's default for f16 weights is f16
    """
def neg(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    -x
    """
def norm(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, eps: typing.SupportsFloat | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    """
    (x - mean) / sqrt(var + eps) over ne0
    """
def pad_ext(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, l0: typing.SupportsInt | typing.SupportsIndex, r0: typing.SupportsInt | typing.SupportsIndex, l1: typing.SupportsInt | typing.SupportsIndex, r1: typing.SupportsInt | typing.SupportsIndex, l2: typing.SupportsInt | typing.SupportsIndex, r2: typing.SupportsInt | typing.SupportsIndex, l3: typing.SupportsInt | typing.SupportsIndex, r3: typing.SupportsInt | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    """
    zero padding, left and right per dimension
    """
def permute(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, a0: typing.SupportsInt | typing.SupportsIndex, a1: typing.SupportsInt | typing.SupportsIndex, a2: typing.SupportsInt | typing.SupportsIndex, a3: typing.SupportsInt | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    """
    axis i of a moves to position a_i
    """
def pool_2d(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, op: typing.SupportsInt | typing.SupportsIndex, k0: typing.SupportsInt | typing.SupportsIndex, k1: typing.SupportsInt | typing.SupportsIndex, s0: typing.SupportsInt | typing.SupportsIndex, s1: typing.SupportsInt | typing.SupportsIndex, p0: typing.SupportsFloat | typing.SupportsIndex, p1: typing.SupportsFloat | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    """
    op 0 = max, 1 = avg
    """
def relu(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    max(x, 0)
    """
def repeat_4d(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, n0: typing.SupportsInt | typing.SupportsIndex, n1: typing.SupportsInt | typing.SupportsIndex, n2: typing.SupportsInt | typing.SupportsIndex, n3: typing.SupportsInt | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    ...
def reshape_4d(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, n0: typing.SupportsInt | typing.SupportsIndex, n1: typing.SupportsInt | typing.SupportsIndex, n2: typing.SupportsInt | typing.SupportsIndex, n3: typing.SupportsInt | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    ...
def rms_norm(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, eps: typing.SupportsFloat | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    """
    x / sqrt(mean(x^2) + eps) over ne0
    """
def rope_ext(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, pos: graphdsl._ggml.Tensor, freq: graphdsl._ggml.Tensor | None, n_dims: typing.SupportsInt | typing.SupportsIndex, mode: typing.SupportsInt | typing.SupportsIndex, n_ctx_orig: typing.SupportsInt | typing.SupportsIndex, freq_base: typing.SupportsFloat | typing.SupportsIndex, freq_scale: typing.SupportsFloat | typing.SupportsIndex, ext_factor: typing.SupportsFloat | typing.SupportsIndex, attn_factor: typing.SupportsFloat | typing.SupportsIndex, beta_fast: typing.SupportsFloat | typing.SupportsIndex, beta_slow: typing.SupportsFloat | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    ...
def rope_multi(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, pos: graphdsl._ggml.Tensor, freq: graphdsl._ggml.Tensor | None, n_dims: typing.SupportsInt | typing.SupportsIndex, sections: typing.Annotated[collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], "FixedSize(4)"], mode: typing.SupportsInt | typing.SupportsIndex, n_ctx_orig: typing.SupportsInt | typing.SupportsIndex, freq_base: typing.SupportsFloat | typing.SupportsIndex, freq_scale: typing.SupportsFloat | typing.SupportsIndex, ext_factor: typing.SupportsFloat | typing.SupportsIndex, attn_factor: typing.SupportsFloat | typing.SupportsIndex, beta_fast: typing.SupportsFloat | typing.SupportsIndex, beta_slow: typing.SupportsFloat | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    """
    multi-section RoPE (mode MROPE / VISION / IMROPE); pos holds 4 rows of ne2 positions, sections count pairs
    """
def scale_bias(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, s: typing.SupportsFloat | typing.SupportsIndex, b: typing.SupportsFloat | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    """
    s * x + b
    """
def sigmoid(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    1 / (1 + exp(-x))
    """
def silu(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    x * sigmoid(x)
    """
def soft_max_ext(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, mask: graphdsl._ggml.Tensor | None, scale: typing.SupportsFloat | typing.SupportsIndex, max_bias: typing.SupportsFloat | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    """
    softmax(a * scale + mask) over ne0
    """
def sqr(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    x * x
    """
def sqrt(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    sqrt(x)
    """
def sub(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, b: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    a - b, b repeated to a's shape
    """
def sum_rows(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    sum over ne0 -> ne0 = 1
    """
def tanh(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    tanh(x)
    """
def transpose(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor) -> graphdsl._ggml.Tensor:
    """
    swap ne0 and ne1 (a view)
    """
def view_4d(ctx: graphdsl._ggml.Context, a: graphdsl._ggml.Tensor, n0: typing.SupportsInt | typing.SupportsIndex, n1: typing.SupportsInt | typing.SupportsIndex, n2: typing.SupportsInt | typing.SupportsIndex, n3: typing.SupportsInt | typing.SupportsIndex, nb1: typing.SupportsInt | typing.SupportsIndex, nb2: typing.SupportsInt | typing.SupportsIndex, nb3: typing.SupportsInt | typing.SupportsIndex, offset: typing.SupportsInt | typing.SupportsIndex) -> graphdsl._ggml.Tensor:
    ...
