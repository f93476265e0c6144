"""HF references for the Phi-4-multimodal tests: a tiny Phi4MultimodalForCausalLM with random
weights, its image embedding (``image_embeds`` after the projector) and HF's image processor.

HF's ``Phi4MultimodalImageProcessor`` exists only on torchvision. The torchvision wheel this
machine installs (0.28.0) is a CUDA build whose compiled ops do not load beside the CPU torch;
its pure-Python transforms do once the op schemas its import registers fakes for (``nms``,
``qnms``) are declared first. That workaround lives here, in the tests, and nowhere else.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from hf_refs import need_torch, randomize


def tiny_phi4(seed=0, image_size=32, patch_size=4, n_layer=3, audio=None):
    """Phi4MultimodalForCausalLM: SigLIP tower (d 32, 4 heads, 3 layers, feature layer -2) at crop
    size ``image_size``, projector -> 48; a small Conformer (``audio`` overrides its config)."""
    torch = need_torch()
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM
    torch.manual_seed(seed)
    vc = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=n_layer,
              image_size=image_size, patch_size=patch_size, crop_size=image_size)
    ac = dict(hidden_size=32, intermediate_size=48, num_blocks=2, num_attention_heads=4, ext_pw_out_channel=32,
              depthwise_separable_out_channel=32, nemo_conv_channels=16, input_size=16, time_reduction=8,
              bias_max_distance=50, kernel_size=3, **(audio or {}))
    cfg = Phi4MultimodalConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=2, vision_config=vc, audio_config=ac,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    model = randomize(Phi4MultimodalForCausalLM(cfg), seed)
    emb = model.model.embed_tokens_extend.image_embed
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # separators zero-initialised: give them the features' scale so that they count
        for p in (emb.sub_img_feature_extensor, emb.global_img_feature_extensor):
            p.copy_(torch.randn(p.shape, generator=gen))
    return cfg, model


def hf_image_embeds(model, pixel_values, image_sizes, attention_mask):
    """The projector's output for a batch as HF's processor gives it: (sum of tokens, d_text)."""
    torch = need_torch()
    emb = model.model.embed_tokens_extend.image_embed
    cfg = model.config
    tok = cfg.vision_config.image_token_id
    # run forward with enough image tokens; count them from the module's own output length
    px, sizes, mask = (torch.as_tensor(np.asarray(a)) for a in (pixel_values, image_sizes, attention_mask))
    n = n_image_tokens(cfg, sizes, mask)
    ids = torch.full((1, n), tok, dtype=torch.long)
    with torch.no_grad():
        out = emb(ids, torch.zeros(1, n, cfg.hidden_size), image_pixel_values=px.float(), image_sizes=sizes,
                  image_attention_mask=mask)
    return out[0].numpy()


def n_image_tokens(cfg, sizes, mask) -> int:
    """Rows HF's image embedding emits for the batch (the processor's own count hard-codes 448/14)."""
    v = cfg.vision_config
    side = (v.image_size // v.patch_size + 1) // 2
    total = 0
    for i, (h, w) in enumerate(np.asarray(sizes)):
        hr, wr = int(h) // v.crop_size, int(w) // v.crop_size
        m = np.asarray(mask[i][1:hr * wr + 1])[:, 0::2, 0::2].reshape(hr, wr, side, side)
        m = m.transpose(0, 2, 1, 3).reshape(hr * side, wr * side)
        uh, uw = int(m[:, 0].sum()), int(m[0, :].sum())
        total += uh * (uw + 1) + 1 + side * (side + 1)
    return total


_DECLARED = []


TV_SITE = Path(__file__).resolve().parents[2] / "build" / "tv-site"


def torchvision_transforms():
    """Import torchvision's pure-Python transforms beside the CPU torch (see the module doc), or skip.

    torchvision is looked up in the environment, then in build/tv-site (``make install`` puts the
    wheel installed with --no-deps outside the venv, because once in the venv it breaks every
    ``import transformers`` model class of a process that has not declared the schemas first).
    """
    torch = pytest.importorskip("torch", reason="needs torch (pip install -e .[test])")
    if importlib.util.find_spec("torchvision") is None and TV_SITE.is_dir():
        sys.path.append(str(TV_SITE))
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("needs torchvision 0.28.0 in build/tv-site (make install)")
    if not _DECLARED:
        try:
            lib = torch.library.Library("torchvision", "DEF")
            for op in ("nms", "qnms"):
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _DECLARED.append(lib)
        except RuntimeError:  # declared already (torchvision's own ops loaded)
            _DECLARED.append(None)
    import torchvision  # noqa: F401
    from transformers.utils import import_utils
    for name in ("is_torchvision_available", "is_torchvision_v2_available"):
        getattr(getattr(import_utils, name, None), "cache_clear", lambda: None)()


def hf_image_processor(crop: int, patch: int, dynamic_hd: int = 36):
    """HF's processor for square crops; call it as HF's (images, return_tensors="np")."""
    torchvision_transforms()
    # the submodule itself: the package's lazy table may have filed the class as unavailable already
    from transformers.models.phi4_multimodal.image_processing_phi4_multimodal import Phi4MultimodalImageProcessor
    return Phi4MultimodalImageProcessor(size={"height": crop, "width": crop}, patch_size=patch, dynamic_hd=dynamic_hd)


def hf_process(cases) -> list[dict[str, np.ndarray]]:
    """HF's processor output for each (uint8 (H, W, 3) image, crop, patch, dynamic_hd), computed in
    one fresh Python: transformers files its torchvision-backed modules as unavailable when a
    process imported them before torchvision was on the path (as a whole test session does), and
    reloading does not undo that."""
    import subprocess
    import tempfile
    # skip here, not in the child, when torchvision is missing; this process never imports it
    if importlib.util.find_spec("torchvision") is None and not (TV_SITE / "torchvision").is_dir():
        pytest.skip("needs torchvision 0.28.0 in build/tv-site (make install)")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for i, (im, *_) in enumerate(cases):
            np.save(d / f"in{i}.npy", im)
        params = [tuple(int(v) for v in c[1:]) for c in cases]
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import numpy as np; "
                "from PIL import Image; from phi4_hf import hf_image_processor\n"
                f"for i, (c, p, h) in enumerate({params!r}):\n"
                f"    o = hf_image_processor(c, p, h)([Image.fromarray(np.load({str(d)!r} + f'/in{{i}}.npy'))], "
                "return_tensors='np')\n"
                f"    np.savez({str(d)!r} + f'/out{{i}}.npz', **{{k: np.asarray(v) for k, v in o.items()}})")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        out = []
        for i in range(len(cases)):
            with np.load(d / f"out{i}.npz") as z:
                out.append({k: z[k] for k in z.files})
        return out


def hf_audio_embeds(model, features, mode="speech"):
    """The projector's output ("speech", or "vision": HF's choice when the batch holds an image)
    for one clip's features (T, n_mel): (ceil(T / 8), d_text)."""
    torch = need_torch()
    emb = model.model.embed_tokens_extend.audio_embed
    cfg = model.config
    n = -(-features.shape[0] // cfg.audio_config.time_reduction)
    ids = torch.full((1, n), cfg.audio_config.audio_token_id, dtype=torch.long)
    with torch.no_grad():
        out = emb(ids, torch.zeros(1, n, cfg.hidden_size), torch.from_numpy(np.asarray(features, np.float32))[None],
                  audio_embed_sizes=torch.tensor([n]), audio_projection_mode=mode)
    return out[0].numpy()


def randomize_audio_buffers(model, seed=0):
    """The input normalisation is buffers (mean 0, invstd 1 at init) and the relative position bias
    starts near 0: give them values that count, so that a mistake in either shows."""
    torch = need_torch()
    enc = model.model.embed_tokens_extend.audio_embed.encoder
    e = enc.encoder_embedding
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        e.global_mean.copy_(torch.randn(e.global_mean.shape, generator=gen))
        e.global_invstd.copy_(0.5 + torch.rand(e.global_invstd.shape, generator=gen))
        b = enc.relative_attention_bias_layer.bias_values.weight
        b.copy_(torch.randn(b.shape, generator=gen))
    return model
