"""The NumPy reference semantics checked against PyTorch, for the ops PyTorch has.

Torch runs in float64 here, so the bound (1e-10 normalised max error) checks semantics, not
rounding.
"""
from __future__ import annotations

import numpy as np
import pytest

from graphdsl.ops import REGISTRY

torch = pytest.importorskip("torch")
F = torch.nn.functional


def ref(name, /, *xs, **attrs):
    return REGISTRY[name].reference(*xs, **attrs)


def t(x):
    return torch.from_numpy(np.asarray(x))


R = np.random.default_rng(0)
X = R.standard_normal((5, 7, 12))
Y = R.standard_normal((5, 7, 12))
W4 = R.standard_normal((4, 5, 3, 2))
X4 = R.standard_normal((2, 5, 9, 8))

CASES = {
    "add": (lambda: ref("add", X, Y[0, 0]), lambda: t(X) + t(Y[0, 0])),
    "mul": (lambda: ref("mul", X, Y), lambda: t(X) * t(Y)),
    "div": (lambda: ref("div", X, Y), lambda: t(X) / t(Y)),
    "gelu": (lambda: ref("gelu", X), lambda: F.gelu(t(X), approximate="tanh")),
    "gelu_erf": (lambda: ref("gelu_erf", X), lambda: F.gelu(t(X))),
    "gelu_quick": (lambda: ref("gelu_quick", X), lambda: t(X) * torch.sigmoid(1.702 * t(X))),
    "silu": (lambda: ref("silu", X), lambda: F.silu(t(X))),
    "sigmoid": (lambda: ref("sigmoid", X), lambda: torch.sigmoid(t(X))),
    "relu": (lambda: ref("relu", X), lambda: F.relu(t(X))),
    "tanh": (lambda: ref("tanh", X), lambda: torch.tanh(t(X))),
    "norm": (lambda: ref("norm", X, eps=1e-5), lambda: F.layer_norm(t(X), (12,), eps=1e-5)),
    "rms_norm": (lambda: ref("rms_norm", X, eps=1e-6), lambda: F.rms_norm(t(X), (12,), eps=1e-6)),
    "soft_max": (lambda: ref("soft_max", X, scale=0.5), lambda: F.softmax(0.5 * t(X), -1)),
    "mul_mat": (lambda: ref("mul_mat", X[0], Y[0]), lambda: F.linear(t(X[0]), t(Y[0]))),
    "get_rows": (lambda: ref("get_rows", X[0], np.array([3, 0, 6, 3], np.int32)),
                 lambda: F.embedding(torch.tensor([3, 0, 6, 3]), t(X[0]))),
    "conv_1d": (lambda: ref("conv_1d", Y[:4, :5, :3], X[0, :5], stride=(2,), padding=(1,), dilation=(1,)),
                lambda: F.conv1d(t(X[0, :5])[None], t(Y[:4, :5, :3]), stride=2, padding=1)[0]),
    "conv_2d": (lambda: ref("conv_2d", W4, X4, stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
                lambda: F.conv2d(t(X4), t(W4), stride=(2, 1), padding=(1, 0), dilation=(1, 2))),
    "pool_2d": (lambda: ref("pool_2d", X, op="avg", kernel=(2, 3), stride=(2, 3)),
                lambda: F.avg_pool2d(t(X), (2, 3), (2, 3))),
    "pad": (lambda: ref("pad", X, pads=((0, 1), (2, 0), (1, 1))), lambda: F.pad(t(X), (1, 1, 2, 0, 0, 1))),
    "flash_attn_ext": (
        lambda: ref("flash_attn_ext", X[:4], Y[:2], Y[2:4], scale=0.3),
        lambda: F.scaled_dot_product_attention(t(X[:4]), t(Y[:2]).repeat_interleave(2, 0),
                                               t(Y[2:4]).repeat_interleave(2, 0), scale=0.3).transpose(0, 1)),
}


@pytest.mark.parametrize("op", sorted(CASES))
def test_reference_matches_torch(op):
    ours, theirs = CASES[op]
    a, b = np.asarray(ours(), np.float64), theirs().numpy()
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1e-10 * max(1.0, np.abs(b).max())


def test_rope_matches_hf_llama():
    """Normal mode is GPT-J style pairs; neox mode is HF Llama's rotate_half."""
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    x = R.standard_normal((6, 2, 8))  # (tokens, heads, dim)
    pos = np.arange(6, dtype=np.int32) * 3
    inv = 1.0 / (10000 ** (np.arange(0, 8, 2) / 8))
    freqs = np.outer(pos, inv)
    emb = np.concatenate([freqs, freqs], -1)
    q = t(x).transpose(0, 1)[None]  # (1, heads, tokens, dim)
    out, _ = apply_rotary_pos_emb(q, q, t(np.cos(emb))[None], t(np.sin(emb))[None])
    ours = ref("rope", x, pos, n_dims=8, mode="neox", freq_base=10000.0, freq_scale=1.0)
    np.testing.assert_allclose(ours, out[0].transpose(0, 1).numpy(), atol=1e-10)
