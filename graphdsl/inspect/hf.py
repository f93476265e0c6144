"""Compare a graphdsl graph with a Hugging Face torch model node by node.

    >>> from transformers import CLIPVisionModel                                 # doctest: +SKIP
    >>> model = CLIPVisionModel.from_pretrained(folder, attn_implementation="eager").eval()  # doctest: +SKIP
    >>> rep = graphdsl.inspect.diff_hf(run, {"pixels": px[0].numpy()}, model, {"pixel_values": px})  # doctest: +SKIP
    >>> print(rep); rep.first_bad                                                # doctest: +SKIP

How: a mapping from HF module names to graphdsl node names, e.g.
``{"encoder.layers.{i}.self_attn": "v.blk.{i}.attn_out"}``. Each key is matched against the
names of ``model.named_modules()`` at a dotted boundary (so the same key finds
``vision_model.encoder.layers.3.self_attn`` in CLIPVisionModel and
``model.vision_tower.vision_model.encoder.layers.3.self_attn`` in LLaVA); ``{i}`` (any
``{name}``) matches a decimal index that the value is formatted with, ``*`` matches one dotted
part, and a key starting with ``re:`` is a regular expression with named groups. A forward hook
on every matched module records its output (the first element of a tuple, as HF attention
returns ``(out, weights)``); HF's batch of one is dropped when the node has no batch axis. Any
other layout change is the mapping's to make: a value may be ``(node name, fn(array) -> array)``.
The recorded arrays are `diff`'s reference, labelled with the HF class and module names.

Strictness: a key that matches no module, or whose node names match no node of the graph, is
a ValueError with close names; two modules giving one node are a ValueError. HF layers that the
graph does not build (LLaVA's graph stops at its feature layer) are listed under the report.

``MAPPINGS`` holds the defaults for the towers graphdsl builds (CLIP + LLaVA projector, SigLIP +
Gemma 3 projector, Whisper encoder); ``default_mapping(model)`` picks them from the module classes.
torch is imported only when a model is run (it is a test extra, not a dependency).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np

from .compare import DiffReport, close_names, diff

_VIT_LAYER = {  # HF CLIP / SigLIP encoder layer -> blocks.vit_layer nodes
    "encoder.layers.{i}.layer_norm1": "v.blk.{i}.ln1",
    "encoder.layers.{i}.self_attn.q_proj": "v.blk.{i}.attn_q",
    "encoder.layers.{i}.self_attn.k_proj": "v.blk.{i}.attn_k",
    "encoder.layers.{i}.self_attn.v_proj": "v.blk.{i}.attn_v",
    "encoder.layers.{i}.self_attn": "v.blk.{i}.attn_out",
    "encoder.layers.{i}.layer_norm2": "v.blk.{i}.ln2",
    "encoder.layers.{i}.mlp.fc1": "v.blk.{i}.ffn_up",
    "encoder.layers.{i}.mlp.activation_fn": "v.blk.{i}.ffn_act",
    "encoder.layers.{i}.mlp.fc2": "v.blk.{i}.ffn_down",
    "encoder.layers.{i}": "v.blk.{i}.layer_out",
}

MAPPINGS: dict[str, dict[str, str]] = {
    "clip": {"embeddings": "v.inp_pos", "pre_layrnorm": "v.pre_ln", **_VIT_LAYER},
    "llava_projector": {"multi_modal_projector.linear_1": "mm.0", "multi_modal_projector.act": "mm.act",
                        "multi_modal_projector.linear_2": "mm.2"},
    "siglip": {"embeddings": "v.inp_pos", **_VIT_LAYER, "post_layernorm": "v.post_ln"},
    "gemma3_projector": {"multi_modal_projector.avg_pool": "mm.pool",
                         "multi_modal_projector.mm_soft_emb_norm": "mm.soft_emb_norm"},
    "whisper": {"conv1": "a.conv1d.1.b", "conv2": "a.conv1d.2.b",
                "layers.{i}.self_attn_layer_norm": "a.blk.{i}.ln1",
                "layers.{i}.self_attn.q_proj": "a.blk.{i}.attn_q",
                "layers.{i}.self_attn.k_proj": "a.blk.{i}.attn_k",
                "layers.{i}.self_attn.v_proj": "a.blk.{i}.attn_v",
                "layers.{i}.self_attn": "a.blk.{i}.attn_out",
                "layers.{i}.final_layer_norm": "a.blk.{i}.ln2",
                "layers.{i}.fc1": "a.blk.{i}.ffn_up",
                "layers.{i}.activation_fn": "a.blk.{i}.ffn_act",
                "layers.{i}.fc2": "a.blk.{i}.ffn_down",
                "layers.{i}": "a.blk.{i}.layer_out",
                "layer_norm": "a.post_ln"},
}

# HF module class -> the default mappings its presence adds
_BY_CLASS = [("CLIPVisionEmbeddings", "clip"), ("LlavaMultiModalProjector", "llava_projector"),
             ("SiglipVisionEmbeddings", "siglip"), ("Gemma3MultiModalProjector", "gemma3_projector"),
             ("WhisperEncoder", "whisper")]

Target = str | tuple[str, Callable[[np.ndarray], np.ndarray]]  # node name, or (name, converter)


def default_mapping(model) -> dict[str, str]:
    """The MAPPINGS entries for the HF module classes found in `model` (CLIP, SigLIP, Whisper, projectors)."""
    classes = {type(m).__name__ for m in model.modules()}
    out: dict[str, str] = {}
    for cls, key in _BY_CLASS:
        if cls in classes:
            out.update(MAPPINGS[key])
    if not out:
        raise ValueError(f"no default HF mapping for {type(model).__name__}; known towers: "
                         f"{', '.join(c for c, _ in _BY_CLASS)} (pass mapping=)")
    return out


def _pattern(key: str) -> re.Pattern:
    if key.startswith("re:"):
        body = key[3:]
    else:
        body = ""
        for part in re.split(r"(\{\w+\}|\*)", key):
            if part == "*":
                body += r"[^.]+"
            elif re.fullmatch(r"\{\w+\}", part):
                body += rf"(?P<{part[1:-1]}>\d+)"
            else:
                body += re.escape(part)
    return re.compile(rf"(?:.*\.)?(?:{body})")


def _first_tensor(out):
    while isinstance(out, (tuple, list)) or (hasattr(out, "to_tuple") and not hasattr(out, "shape")):
        out = out[0]
    return out.detach().float().cpu().numpy()


def _to_node(arr: np.ndarray, shape: tuple[int, ...], module: str, node: str) -> np.ndarray:
    if arr.shape == tuple(shape):
        return arr
    if arr.ndim == len(shape) + 1 and arr.shape[0] == 1 and arr.shape[1:] == tuple(shape):
        return arr[0]  # HF's batch of one; the graph has no batch axis
    raise ValueError(f"HF module '{module}' gives {arr.shape}, node '{node}' is {tuple(shape)}: give the "
                     f"mapping a converter, {{'{module}': ('{node}', fn)}}")


def hf_capture(model, run_hf: Callable[[], object], mapping: Mapping[str, Target], graph) -> tuple[
        dict[str, np.ndarray], dict[str, str], list[str]]:
    """Run HF with forward hooks; return (node -> array in the node's layout, node -> HF module,
    HF modules whose node the graph does not build)."""
    import torch

    modules = list(model.named_modules())
    plan: dict[str, tuple[str, str, Callable | None]] = {}  # HF module -> (key, node name, converter)
    unmatched = []
    for key, target in mapping.items():
        node, conv = (target, None) if isinstance(target, str) else target
        pat, hits = _pattern(key), 0
        for name, _ in modules:
            m = pat.fullmatch(name)
            if m:
                hits += 1
                plan[name] = (key, node.format(**m.groupdict()), conv)
        if not hits:
            unmatched.append(f"{key!r}{close_names(key, [n for n, _ in modules])}")
    if unmatched:
        raise ValueError(f"HF mapping for {type(model).__name__}: keys that match no module: {'; '.join(unmatched)}")
    by_node: dict[str, str] = {}
    for mod, (_, node, _) in plan.items():
        if node in by_node:
            raise ValueError(f"HF modules '{by_node[node]}' and '{mod}' both map to node '{node}': "
                             f"make the key longer (e.g. with its parent's name)")
        by_node[node] = mod
    computed = {n.name: n for n in graph.nodes if n.op not in ("input", "weight")}
    unknown = []
    for key in mapping:
        nodes = [node for k, node, _ in plan.values() if k == key]
        if not any(n in computed for n in nodes):
            unknown.append(f"{key!r} -> '{nodes[0]}'{close_names(nodes[0], computed)}")
    if unknown:
        raise ValueError(f"HF mapping: nodes that graph '{graph.name}' does not have: {'; '.join(unknown)}")
    got: dict[str, np.ndarray] = {}

    def hook(name):
        def record(_module, _inputs, out):
            got[name] = _first_tensor(out)
        return record

    handles = [mod.register_forward_hook(hook(name)) for name, mod in modules if name in plan]
    try:
        with torch.no_grad():
            run_hf()
    finally:
        for h in handles:
            h.remove()
    values, sources, absent = {}, {}, []
    for mod, (_, node, conv) in plan.items():
        if mod not in got:
            continue  # the forward did not reach it (e.g. a decoder): nothing to compare
        if node not in computed:
            absent.append(mod)
            continue
        arr = conv(got[mod]) if conv else got[mod]
        values[node] = _to_node(np.asarray(arr), computed[node].shape, mod, node)
        sources[node] = mod
    return values, sources, absent


def diff_hf(run, inputs: Mapping[str, object], model, hf_inputs, mapping: Mapping[str, Target] | None = None, *,
            forward: Callable | None = None, rel_l2: float = 1e-5, max_abs: float | None = None) -> DiffReport:
    """Compare `run` (a graphdsl executor) with an HF torch model on every mapped node.

    Args:
        run: the executor under test (ggml or reference).
        inputs: its inputs.
        model: the HF torch module (eval mode; eager attention gives the closest numbers).
        hf_inputs: HF's inputs: a dict of keyword arguments, or one positional argument.
        mapping: HF module key -> node name (see the module docstring); default `default_mapping(model)`.
        forward: `fn(model, hf_inputs)` that runs HF (default: `model(**hf_inputs)` or
            `model(hf_inputs)`), e.g. ``lambda m, px: m.model.get_image_features(px)``.
        rel_l2, max_abs: the bounds per node.

    Returns:
        A DiffReport of run vs HF, one row per node the graph has and HF produced, with the HF
        module it came from; `.first_bad` is the first node over the bound.
    """
    mapping = default_mapping(model) if mapping is None else mapping
    if forward is None:
        def forward(m, x):
            return m(**x) if isinstance(x, Mapping) else m(x)
    values, sources, absent = hf_capture(model, lambda: forward(model, hf_inputs), mapping, run.graph)
    notes = [f"{len(absent)} HF module(s) have no node in the graph (layers it does not build): "
             f"{', '.join(absent[:3])}" + (f" … {absent[-1]}" if len(absent) > 3 else "")] if absent else []
    return diff(run, values, inputs, nodes=list(values), rel_l2=rel_l2, max_abs=max_abs,
                labels=(None, f"HF {type(model).__name__}"), sources=sources, notes=notes)
