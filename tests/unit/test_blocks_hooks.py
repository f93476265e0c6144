"""The blocks new families need (issue 13 item 4), each against HF's own code or plain torch.

- pixel_shuffle vs ``Idefics3Connector.pixel_shuffle`` / SmolVLM's / InternVL's;
- merge_order vs ``get_vision_position_ids`` (Qwen2-VL's patch order), patch_merge inside HF's
  Qwen2-VL ``PatchMerger``;
- attention with fused qkv, a RoPE q/k hook and the cu_seqlens mask vs HF's Qwen2-VL
  ``VisionAttention`` (which attends per sequence), a q/k RMSNorm hook vs plain torch, masks of
  rank 3 and 4 vs an explicit per-image / per-sequence loop.

Each case runs on the backend under test (tests/support/target.py, "cpu" by default) and the NumPy
reference, within 1e-5 normalised max error (max |out - ref| / max |ref|) in f32; layout-only
blocks must be exact. Each comparison has a negative control that must fail it.
"""
import numpy as np
import pytest
import target

import graphdsl
from graphdsl import Graph, blocks, ops

BACKENDS = [target.BACKEND, "reference"]
BOUND = target.TF32_OP if target.TF32 else 1e-5
WRONG = 1e-2  # a negative control must be at least this far off


def nmax(out, ref) -> float:
    """max |out - ref| / max |ref| in float64."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def run(g, backend, weights=None, **inputs):
    """Compile and run; constants (seq_mask) are fed by the executor itself."""
    return graphdsl.compile(g, backend, weights=weights or {})(inputs)["y"]


def torch_mods():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return torch


def _rng(seed=0):
    return np.random.default_rng(seed)


# -- pixel shuffle / patch merge -------------------------------------------------------------------
def _hf_shuffle(kind):
    if kind == "idefics3":
        from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector
        return lambda x, h, w, s: Idefics3Connector.pixel_shuffle(None, x, s)
    if kind == "smolvlm":
        from transformers.models.smolvlm.modeling_smolvlm import SmolVLMConnector
        return lambda x, h, w, s: SmolVLMConnector.pixel_shuffle(None, x, s)
    from transformers.models.internvl.modeling_internvl import InternVLModel

    def internvl(x, h, w, s):  # as InternVLModel.get_image_features feeds it: (B, h, w, C)
        y = InternVLModel.pixel_shuffle(None, x.reshape(x.shape[0], h, w, -1), 1.0 / s)
        return y.reshape(x.shape[0], -1, y.shape[-1])
    return internvl


def _shuffle_graph(shape, grid, s, merge_only=False):
    g = Graph("ps")
    x = g.input("x", shape)
    with g.scope("mm"):
        y = blocks.patch_merge(x, s) if merge_only else blocks.pixel_shuffle(x, grid, s)
    g.output("y", y)
    return g


CASES = [("idefics3", (4, 4), 2), ("idefics3", (6, 6), 3), ("idefics3", (8, 8), 4), ("idefics3", (8, 8), 2),
         ("smolvlm", (6, 6), 2), ("internvl", (4, 6), 2), ("internvl", (6, 4), 2), ("internvl", (8, 12), 4)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [0, 2])
@pytest.mark.parametrize("kind,grid,s", CASES)
def test_pixel_shuffle_matches_hf(kind, grid, s, batch, backend):
    torch = torch_mods()
    (h, w), d = grid, 5
    x = _rng(s).standard_normal((max(batch, 1), h * w, d)).astype(np.float32)
    ref = _hf_shuffle(kind)(torch.from_numpy(x), h, w, s).numpy()
    shape = x.shape if batch else x.shape[1:]
    out = run(_shuffle_graph(shape, grid, s), backend, x=x.reshape(shape))
    np.testing.assert_array_equal(out, ref if batch else ref[0])  # a layout: exact

    # negative controls: Qwen's view on raster rows, and (non-square) the grid read transposed
    wrong = run(_shuffle_graph(shape, grid, s, merge_only=True), backend, x=x.reshape(shape))
    assert nmax(wrong, ref if batch else ref[0]) > WRONG
    if h != w:
        wrong = run(_shuffle_graph(shape, (w, h), s), backend, x=x.reshape(shape))
        assert nmax(wrong, ref if batch else ref[0]) > WRONG


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grid,m", [((4, 6), 2), ((6, 4), 2), ((6, 9), 3), ((2, 2), 2)])
def test_merge_order_is_qwen2vl_patch_order(grid, m, backend):
    """Raster (row, col) features put in merge order equal HF's vision position ids."""
    torch = torch_mods()
    from transformers.vision_utils import get_vision_position_ids
    h, w = grid
    ref = get_vision_position_ids(torch.tensor([[1, h, w]]), m).numpy()  # (h*w, 2) rows, cols
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x = np.stack([rows.ravel(), cols.ravel()], -1).astype(np.float32)
    g = Graph("mo")
    g.output("y", blocks.merge_order(g.input("x", x.shape), grid, m))
    np.testing.assert_array_equal(run(g, backend, x=x), ref)
    idx = blocks.merge_order_index(grid, m)
    np.testing.assert_array_equal(np.stack([idx // w, idx % w], -1), ref)
    if (h, w) != (m, m):  # the raster order itself is not the answer
        assert not np.array_equal(x, ref)

    # pixel_shuffle == patch_merge(merge_order(.)) on a batch
    xb = _rng().standard_normal((2, h * w, 3)).astype(np.float32)
    g = Graph("mo2")
    xi = g.input("x", xb.shape)
    g.output("y", ops.sub(blocks.pixel_shuffle(xi, grid, m),
                          blocks.patch_merge(blocks.merge_order(xi, grid, m), m), name="d"))
    assert not run(g, backend, x=xb).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_patch_merge_in_qwen2vl_patch_merger(backend):
    """ln_q -> patch_merge -> mm.0 -> GELU -> mm.2 vs HF's PatchMerger on merge-ordered patches."""
    torch = torch_mods()
    from transformers.models.qwen2_vl.modeling_qwen2_vl import PatchMerger
    torch.manual_seed(0)
    hf = PatchMerger(dim=24, context_dim=8, spatial_merge_size=2).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    grid = (4, 6)
    x = _rng(1).standard_normal((24, 8)).astype(np.float32)  # raster
    xm = x[blocks.merge_order_index(grid, 2)]
    with torch.no_grad():
        ref = hf(torch.from_numpy(xm)).numpy()
        wrong = hf(torch.from_numpy(x)).numpy()  # negative control: merged in raster order
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    weights = {"v.post_ln.weight": sd["ln_q.weight"], "v.post_ln.bias": sd["ln_q.bias"],
               **{f"mm.{i}.{p}": sd[f"mlp.{i}.{p}"] for i in (0, 2) for p in ("weight", "bias")}}
    g = Graph("merger")
    xi = g.input("x", x.shape)
    with g.scope("v"):
        y = blocks.merge_order(xi, grid, 2)  # the transformer would run here, in merge order
        y = blocks.norm(y, "post_ln", eps=1e-6)
    y = blocks.patch_merge(y, 2)
    with g.scope("mm"):
        y = blocks.linear(y, "0", 32)
        y = blocks.activation(y, "gelu_erf", name="act")
        y = blocks.linear(y, "2", 24)
    g.output("y", y)
    out = run(g, backend, weights, x=x)
    assert nmax(out, ref) <= BOUND
    assert nmax(wrong, ref) > WRONG


# -- attention -------------------------------------------------------------------------------------
def _rope_hook(pos):
    """HF's rotate_half rotary (cos/sin of p * base^(-2i/d), both halves) is ggml's neox mode."""
    def hook(q, k, il):
        return (ops.rope(q, pos, mode="neox", name="attn_q.rope"),
                ops.rope(k, pos, mode="neox", name="attn_k.rope"))
    return hook


LENGTHS = [[16], [4, 12], [1, 6, 9], [5, 5, 5, 5], [7, 3], [3, 0, 5]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("impl", ["flash", "softmax"])
@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
def test_attention_matches_qwen2vl_vision_attention(lengths, impl, backend):
    """Fused attn_qkv + RoPE hook + seq_mask vs HF's VisionAttention given cu_seqlens."""
    torch = torch_mods()
    from transformers import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import VisionAttention
    d, n_head, n = 32, 4, sum(lengths)
    cfg = Qwen2VLVisionConfig(embed_dim=d, num_heads=n_head)
    cfg._attn_implementation = "eager"  # HF then runs each cu_seqlens segment on its own
    torch.manual_seed(0)
    hf = VisionAttention(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn(p.shape) * 0.2)
    rng = _rng(len(lengths))
    x = rng.standard_normal((n, d)).astype(np.float32)
    pos = rng.integers(0, 40, n).astype(np.int32)
    dh = d // n_head
    ang = pos[:, None].astype(np.float64) * 10000.0 ** (-np.arange(0, dh, 2) / dh)
    emb = torch.from_numpy(np.concatenate([ang, ang], -1).astype(np.float32))
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
    with torch.no_grad():
        ref = hf(torch.from_numpy(x), cu, position_embeddings=(emb.cos(), emb.sin())).numpy()
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    weights = {"v.blk.0.attn_qkv.weight": sd["qkv.weight"], "v.blk.0.attn_qkv.bias": sd["qkv.bias"],
               "v.blk.0.attn_out.weight": sd["proj.weight"], "v.blk.0.attn_out.bias": sd["proj.bias"]}

    def graph(masked):
        g = Graph("qwen2vl_attn")
        xi, pi = g.input("x", (n, d)), g.input("pos", (n,), "i32")
        with g.scope("v"):
            mask = blocks.seq_mask(g, lengths) if masked else None
            with g.scope("blk.0"):
                y = blocks.attention(xi, n_head, qkv="fused", qk_hook=_rope_hook(pi), il=0, mask=mask, impl=impl)
        g.output("y", y)
        return g

    assert nmax(run(graph(True), backend, weights, x=x, pos=pos), ref) <= BOUND
    if sum(1 for n_i in lengths if n_i) > 1:  # negative control: one sequence attending across images
        assert nmax(run(graph(False), backend, weights, x=x, pos=pos), ref) > WRONG


def _torch_attention(torch, x, w, n_head, mask=None, qk=None):
    """Plain torch multi-head attention; x (..., n, d), mask broadcast to (..., h, n, n)."""
    t = {k: torch.from_numpy(v).double() for k, v in w.items()}
    x = torch.from_numpy(x).double()
    *b, n, d = x.shape
    q, k, v = (x @ t[f"{p}.weight"].T + t[f"{p}.bias"] for p in ("q", "k", "v"))
    q, k, v = (z.reshape(*b, n, n_head, d // n_head) for z in (q, k, v))
    if qk is not None:
        q, k = qk(q, t["qn"]), qk(k, t["kn"])
    q, k, v = (z.transpose(-2, -3) for z in (q, k, v))
    s = q @ k.transpose(-1, -2) / (d // n_head) ** 0.5
    if mask is not None:
        s = s + torch.from_numpy(mask).double()
    a = (torch.softmax(s, -1) @ v).transpose(-2, -3).reshape(*b, n, d)
    return (a @ t["o.weight"].T + t["o.bias"]).numpy()


def _weights(d, norm_dim, seed=0):
    rng = _rng(seed)
    w = {f"{p}.{s}": (rng.standard_normal((d, d) if s == "weight" else d) * 0.3).astype(np.float32)
         for p in "qkvo" for s in ("weight", "bias")}
    w["qn"], w["kn"] = (1 + 0.2 * rng.standard_normal((2, norm_dim))).astype(np.float32)
    return w


def _graph_weights(w, qkv, qk_norm=False):
    out = {"attn_out.weight": w["o.weight"], "attn_out.bias": w["o.bias"]}
    if qk_norm:
        out.update({"attn_q_norm.weight": w["qn"], "attn_k_norm.weight": w["kn"]})
    if qkv == "fused":
        out["attn_qkv.weight"] = np.concatenate([w[f"{p}.weight"] for p in "qkv"])
        out["attn_qkv.bias"] = np.concatenate([w[f"{p}.bias"] for p in "qkv"])
    else:
        out.update({f"attn_{p}.{s}": w[f"{p}.{s}"] for p in "qkv" for s in ("weight", "bias")})
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_head", [True, False])
@pytest.mark.parametrize("qkv", ["fused", "separate"])
@pytest.mark.parametrize("shape", [(7, 24), (2, 5, 24)])
def test_attention_qk_norm_hook_matches_torch(shape, qkv, per_head, backend):
    torch = torch_mods()
    d, n_head, eps = 24, 3, 1e-6
    w = _weights(d, d // n_head if per_head else d)

    def rms(z, wt):  # over d_head, or over the whole width (InternViT)
        flat = z if per_head else z.flatten(-2)
        y = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + eps) * wt
        return y if per_head else y.reshape(z.shape)

    x = _rng(3).standard_normal(shape).astype(np.float32)
    ref = _torch_attention(torch, x, w, n_head, qk=rms)
    plain = _torch_attention(torch, x, w, n_head)  # negative control: the hook left out
    g = Graph("qkn")
    g.output("y", blocks.attention(g.input("x", shape), n_head, qkv=qkv,
                                   qk_hook=blocks.qk_norm(eps, per_head=per_head)))
    out = run(g, backend, _graph_weights(w, qkv, qk_norm=True), x=x)
    assert nmax(out, ref) <= BOUND
    assert nmax(plain, ref) > WRONG


def _random_mask(rng, shape):
    """Additive mask with -inf holes; the diagonal stays finite so no row is empty."""
    m = rng.standard_normal(shape)
    m[rng.random(shape) < 0.3] = -np.inf
    idx = np.arange(shape[-1])
    m[..., idx, idx] = 0.0
    return m.astype(np.float32)


MASKS = {  # x shape, mask shape, how the reference broadcasts it to (..., h, n, n)
    "per_image": ((2, 6, 16), (2, 6, 6), lambda m: m[:, None]),
    "per_head": ((6, 16), (2, 6, 6), lambda m: m),
    "per_image_head": ((2, 6, 16), (2, 2, 6, 6), lambda m: m),
    "one_for_all_images": ((2, 6, 16), (1, 6, 6), lambda m: m[:, None]),
    "per_image_shared_heads": ((2, 6, 16), (2, 1, 6, 6), lambda m: m),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("impl", ["flash", "softmax"])
@pytest.mark.parametrize("form", list(MASKS))
def test_attention_mask_ranks(form, impl, backend):
    torch = torch_mods()
    xs, ms, bcast = MASKS[form]
    rng = _rng(4)
    w = _weights(16, 8)
    x = rng.standard_normal(xs).astype(np.float32)
    m = _random_mask(rng, ms)
    ref = _torch_attention(torch, x, w, 2, mask=bcast(m))
    g = Graph("mask")
    g.output("y", blocks.attention(g.input("x", xs), 2, mask=g.input("m", ms), impl=impl))
    out = run(g, backend, _graph_weights(w, "separate"), x=x, m=m)
    assert nmax(out, ref) <= BOUND
    if ms[0] > 1:  # negative control: the first image's / head's mask used for all
        assert nmax(_torch_attention(torch, x, w, 2, mask=bcast(m[:1])), ref) > WRONG


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_seq_masks_match_a_per_sequence_loop(backend):
    """Two batch entries, each a different packing of 8 tokens: (B, N, N) from nested lengths vs
    attention run on every sequence alone."""
    torch = torch_mods()
    lengths = [[3, 5], [2, 2, 4]]
    w = _weights(16, 8, seed=5)
    x = _rng(5).standard_normal((2, 8, 16)).astype(np.float32)
    ref = np.zeros_like(x)
    for b, ls in enumerate(lengths):
        for lo, hi in zip(np.cumsum([0, *ls[:-1]]), np.cumsum(ls)):
            ref[b, lo:hi] = _torch_attention(torch, x[b, lo:hi], w, 2)
    g = Graph("packed")
    g.output("y", blocks.attention(g.input("x", x.shape), 2, mask=blocks.seq_mask(g, lengths)))
    out = run(g, backend, _graph_weights(w, "separate"), x=x)
    assert nmax(out, ref) <= BOUND
    assert nmax(_torch_attention(torch, x, w, 2), ref) > WRONG  # no mask: attends across


def test_block_mask_from_hf_cu_seqlens():
    torch = torch_mods()
    from transformers.vision_utils import get_vision_cu_seqlens
    cu = get_vision_cu_seqlens(torch.tensor([[1, 2, 2], [2, 2, 3], [1, 1, 1]])).numpy()  # a 2-frame video
    lengths = np.diff(cu)
    assert lengths.tolist() == [4, 6, 6, 1]
    m = blocks.block_mask(lengths)
    assert m.shape == (17, 17) and m.dtype == np.float32
    for i in range(17):
        for j in range(17):
            same = np.searchsorted(cu, i, "right") == np.searchsorted(cu, j, "right")
            assert m[i, j] == (0.0 if same else -np.inf), (i, j)
    assert blocks.block_mask([[1, 2], [3]]).shape == (2, 3, 3)


def test_vit_passes_layer_index_and_scope_to_the_hook():
    seen = []

    def hook(q, k, il):
        seen.append((il, q.graph.qualify("attn_q_norm")))
        return blocks.qk_norm(1e-6)(q, k, il)

    g = Graph("vit")
    x = g.input("x", (5, 16))
    p = blocks.VitParams(16, 2, 32, 1e-5, "gelu_erf", qkv="fused")
    m = blocks.seq_mask(g, [2, 3])
    with g.scope("v"):
        blocks.vit(x, p, 3, mask=[m, None, m], qk_hook=hook)
    assert seen == [(i, f"v.blk.{i}.attn_q_norm") for i in range(3)]
    assert {"v.blk.2.attn_qkv.weight", "v.blk.2.attn_k_norm.weight"} <= set(g.weights)
    assert "v.blk.0.attn_q" in {n.name for n in g.nodes}  # the fused q view keeps q's node name
    assert [bool(g.find(f"v.blk.{i}.attn")[0].inputs[3:]) for i in range(3)] == [True, False, True]


# -- errors ----------------------------------------------------------------------------------------
def _x(shape=(4, 8)):
    g = Graph("e")
    return g, g.input("x", shape)


@pytest.mark.parametrize("mask_shape,match", [
    ((5, 5), r"\[attention\] 'attn': mask \(5, 5\) must be .* n = 4, batch = \(\)"),
    ((2, 3, 4, 4), r"mask \(2, 3, 4, 4\) must be"),
    ((3, 4, 4), r"mask \(3, 4, 4\) leading dims \(3,\) must each be 1 or equal \(2,\)"),
])
def test_attention_mask_errors(mask_shape, match):
    g, x = _x()
    with pytest.raises(ValueError, match=match):
        blocks.attention(x, 2, mask=g.input("m", mask_shape))


def test_attention_argument_errors():
    _, x = _x()
    with pytest.raises(ValueError, match=r"\[attention\] 'attn': a fused attn_qkv has one bias"):
        blocks.attention(x, 2, qkv="fused", qkv_bias=(True, False, True))
    with pytest.raises(ValueError, match="qkv must be one of"):
        blocks.attention(x, 2, qkv="packed")
    with pytest.raises(ValueError, match=r"qk_hook must return q of shape \(4, 2, 4\).*got \(4, 8\)"):
        blocks.attention(x, 2, qk_hook=lambda q, k, il: (ops.reshape(q, (4, 8)), k))
    with pytest.raises(ValueError, match=r"\[vit\] 'blk': 1 masks for 2 layers"):
        blocks.vit(x, blocks.VitParams(8, 2, 16, 1e-5, "relu"), 2, mask=[None])


def test_merge_errors():
    _, x = _x((12, 8))
    with pytest.raises(ValueError, match=r"\[pixel_shuffle\] node 'pixel_shuffle': grid \(h, w\) = \(3, 4\)"):
        blocks.pixel_shuffle(x, (3, 4), 2)
    with pytest.raises(ValueError, match=r"\[merge_order\] .*grid \(h, w\) = \(4, 4\) must hold x's 12 rows"):
        blocks.merge_order(x, (4, 4), 2)
    with pytest.raises(ValueError, match=r"\[patch_merge\] .*12 rows, not a multiple of 3\^2 = 9"):
        blocks.patch_merge(x, 3)
    with pytest.raises(ValueError, match="integer >= 1"):
        blocks.pixel_shuffle(x, (2, 6), 0)


def test_block_mask_errors():
    with pytest.raises(ValueError, match=r"\[block_mask\] lengths must be integers >= 0"):
        blocks.block_mask([2, -1])
    with pytest.raises(ValueError, match="must sum to one N"):
        blocks.block_mask([[2, 2], [3]])


# -- gated FFN (SwiGLU) ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_ffn_matches_hf_qwen2_5_vl_mlp(backend):
    """blocks.ffn(gated=True) vs HF's Qwen2.5-VL ``Qwen2_5_VLMLP`` (down(silu(gate(x)) * up(x)))."""
    torch = torch_mods()
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLMLP

    class Cfg:
        hidden_size, intermediate_size, hidden_act = 16, 24, "silu"
    torch.manual_seed(0)
    mlp = Qwen2_5_VLMLP(Cfg(), bias=True).eval()
    x = _rng(1).standard_normal((5, 16)).astype(np.float32)
    w = {f"ffn_{n}.{k}": getattr(getattr(mlp, f"{n}_proj"), k).detach().numpy()
         for n in ("gate", "up", "down") for k in ("weight", "bias")}
    g = Graph("ffn")
    g.output("y", blocks.ffn(g.input("x", x.shape), 24, "silu", gated=True))
    with torch.no_grad():
        ref = mlp(torch.from_numpy(x)).numpy()
    assert nmax(run(g, backend, w, x=x), ref) <= BOUND
    swapped = {**w, "ffn_gate.weight": w["ffn_up.weight"], "ffn_up.weight": w["ffn_gate.weight"]}
    assert nmax(run(g, backend, swapped, x=x), ref) > WRONG  # gate and up are not interchangeable
