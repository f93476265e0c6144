"""llama.cpp's files, as llama.cpp writes them, against HF (issue 23 item 4).

- Files written by llama.cpp's own convert_hf_to_gguf.py --mmproj (tests/support/lcp_convert.py: from the
  llama-cpp-python sdist; skipped without it) from small random HF models, f32 / f16 / bf16, read
  by ``graphdsl embed --mmproj`` and compared with HF on the same pixels / log-mel.
- Idefics3 (square FFN; f32 / f16), Qwen2-VL (square and not; f32 / f16), Pixtral (f32 / f16).
- Square FFNs (n_ff == n_embd), where ffn_down's width cannot tell legacy naming (fc1 named
  ffn_down) from HF's: graphdsl's own convert output, llama.cpp's, and a legacy-named file.
- Position / class tables stored f16 or bf16, as llama.cpp's legacy LLaVA script writes them.

Bounds: llama.cpp's files 1e-3, bf16 ones 1e-2: ggml's CPU mul_mat rounds the activations to
the weight's type too, so rounding HF's weights the same way would not make the comparison
tighter (as test_models_qwen2vl / pixtral); and its "f32" files keep one tensor f16 (Gemma 3's
mm.input_projection, for llama.cpp issue 13025; Whisper's conv kernels): 2.9e-4 and 4.1e-4
measured. A swapped FFN measures ~1. graphdsl's own f32 files: 1e-5 (hf_refs.BOUND).
Tables rounded to f16 / bf16 are compared with HF holding the same rounded tables, at 1e-5.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import hf_refs
import lcp_convert
import numpy as np
import pytest
from hf_refs import BOUND, rel_err

from graphdsl import dtypes as dt
from graphdsl.gguf_io import load_mmproj, read_gguf

torch = pytest.importorskip("torch", reason="needs torch (pip install -e .[test])")
tf = pytest.importorskip("transformers", reason="needs transformers (pip install -e .[test])")

WAV = Path(__file__).parents[1] / "data" / "speech_16k.wav"
LCP_BOUNDS = {"f32": 1e-3, "f16": 1e-3, "bf16": 1e-2}  # llama.cpp's files (see above)


def embed(mmproj, out, *media) -> np.ndarray:
    """``graphdsl embed --mmproj MMPROJ MEDIA -o OUT`` in a subprocess (a crash fails the test)."""
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "embed", "--mmproj", str(mmproj), *map(str, media),
                        "-o", str(out), "--backend", "cpu"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return np.load(out)


def rewrite(src, dst, *, types=None, drop=(), rename=None) -> Path:
    """A copy of a GGUF file with some tensors re-stored (name -> "f16" / "bf16"), keys dropped and
    tensors renamed: the layouts of other writers, from one file's values."""
    f, r = read_gguf(src), gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), arch=f.architecture)
    for k, fld in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture" or k in drop:
            continue
        sub = fld.types[-1] if fld.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(k, fld.contents(), fld.types[0], sub)
    for name, t in f.tensors.items():
        a, to = np.asarray(t.array), (types or {}).get(name)
        assert t.dtype in ("f32", "f16") and (to is None or t.dtype == "f32"), (name, t.dtype)
        name = (rename or {}).get(name, name)
        if to == "bf16":
            w.add_tensor(name, dt.f32_to_bf16(a), raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(name, a.astype(np.float16) if to == "f16" else a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(dst)


def _png(path, size=32, seed=0) -> np.ndarray:
    from PIL import Image
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def _swap_names(n_layer, prefix="v") -> dict[str, str]:
    return {f"{prefix}.blk.{i}.{a}.{s}": f"{prefix}.blk.{i}.{b}.{s}" for i in range(n_layer) for s in ("weight", "bias")
            for a, b in (("ffn_up", "ffn_down"), ("ffn_down", "ffn_up"))}


# -- Gemma 3 (SigLIP + avg-pool projector), written by llama.cpp ---------------------------------------
def gemma3_folder(path, ff: int, seed=0):
    """Gemma3ForConditionalGeneration, SigLIP d 64 x 2 layers with FFN width ``ff``, in the Hub's layout."""
    torch.manual_seed(seed)
    vc = tf.SiglipVisionConfig(hidden_size=64, intermediate_size=ff, num_attention_heads=4, num_hidden_layers=2,
                               image_size=32, patch_size=4, vision_use_head=False)
    tc = tf.Gemma3TextConfig(hidden_size=48, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                             head_dim=24, num_hidden_layers=1, vocab_size=64)
    cfg = tf.Gemma3Config(vision_config=vc, text_config=tc, mm_tokens_per_image=16, attn_implementation="eager")
    model = hf_refs.randomize(tf.Gemma3ForConditionalGeneration(cfg), seed)
    model.save_pretrained(path)
    lcp_convert.hub_layout(path, [("vision_tower.", "vision_tower.vision_model.")])
    # image_seq_length: the converter derives the pooling (scale_factor 2) from it
    pre = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "image_seq_length": 16}
    (Path(path) / "preprocessor_config.json").write_text(json.dumps(pre))
    return model


def gemma3_ref(model, rgb) -> np.ndarray:
    """HF's features for a trained-size image: rescale and normalise (mean = std = 0.5), no resize."""
    px = torch.from_numpy(((rgb.astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        return model.model.get_image_features(px).pooler_output[0].numpy()


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    d = tmp_path_factory.mktemp("gemma3")
    models = {ff: gemma3_folder(d / f"hf{ff}", ff) for ff in (64, 128)}
    return d, models, _png(d / "img.png")


@pytest.mark.parametrize("ff,outtype", [(64, "f32"), (64, "f16"), (128, "f16"), (128, "bf16")],
                         ids=["square-f32", "square-f16", "ff128-f16", "ff128-bf16"])
@pytest.mark.children
def test_gemma3_llama_cpp_file_equals_hf(gemma3, ff, outtype):
    d, models, rgb = gemma3
    path = lcp_convert.convert(d / f"hf{ff}", d / f"g{ff}-{outtype}.gguf", outtype)
    cfg, tensors = load_mmproj(path)
    assert tensors["v.blk.0.ffn_up.weight"].dtype == ("f32" if outtype == "f32" else outtype)
    err = rel_err(embed(path, d / f"g{ff}-{outtype}.npy", "--image", d / "img.png"), gemma3_ref(models[ff], rgb))
    print(f"gemma3 ff {ff} llama.cpp {outtype}: {err:.2e}")
    assert err <= LCP_BOUNDS[outtype]
    assert any("kept as named" in q for q in cfg.quirks) == (ff == 64), cfg.quirks  # said, as clip.cpp differs


@pytest.mark.children
def test_gemma3_square_ffn_legacy_file_and_negative_control(gemma3):
    """The legacy layout of the same square tower (fc1 named ffn_down, no general.type) still reads
    as HF; the llama.cpp file without general.type, names not swapped, reads wrong: the
    comparison sees the swap."""
    d, models, rgb = gemma3
    src = lcp_convert.convert(d / "hf64", d / "sq.gguf", "f32")
    ref = gemma3_ref(models[64], rgb)
    legacy = rewrite(src, d / "legacy.gguf", drop={"general.type"}, rename=_swap_names(2))
    assert rel_err(embed(legacy, d / "legacy.npy", "--image", d / "img.png"), ref) <= LCP_BOUNDS["f32"]
    unmarked = rewrite(src, d / "unmarked.gguf", drop={"general.type"})
    err = rel_err(embed(unmarked, d / "unmarked.npy", "--image", d / "img.png"), ref)
    print(f"square FFN read with legacy names: {err:.2e}")
    assert err > 0.05


# -- Idefics3 / SmolVLM (SigLIP + pixel-shuffle projector), square FFN, written by llama.cpp ----------
@pytest.mark.children
@pytest.mark.parametrize("outtype,bound", [("f32", BOUND), ("f16", LCP_BOUNDS["f16"])])
def test_idefics3_square_ffn_llama_cpp_file_equals_hf(tmp_path, outtype, bound):
    """An all-f32 llama.cpp file (its Idefics3 keeps .embeddings. f32 and nothing f16) meets graphdsl's
    own bound; the tiles + global frames are HF's processor's (test_models_idefics3)."""
    from test_models_idefics3 import _hf_features, _image

    from graphdsl.preprocess.idefics3 import Idefics3ImageConfig, idefics3_images
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    torch.manual_seed(0)
    vc = Idefics3VisionConfig(hidden_size=64, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
                              image_size=32, patch_size=4)
    cfg = tf.Idefics3Config(vision_config=vc, text_config=hf_refs.tiny_llama(), scale_factor=2,
                            attn_implementation="eager")
    model = hf_refs.randomize(tf.Idefics3ForConditionalGeneration(cfg), 0)
    model.save_pretrained(tmp_path / "hf")
    # the tiling stated: llama.cpp's converter writes size.longest_edge as clip.vision.preproc_image_size
    # (the tower's image_size when absent, i.e. no tiles), and graphdsl reads that key back
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"longest_edge": 4 * 32},
        "max_image_size": {"longest_edge": 32}}))
    _image().save(tmp_path / "i.png")
    path = lcp_convert.convert(tmp_path / "hf", tmp_path / "m.gguf", outtype)
    frames = idefics3_images(tmp_path / "i.png", Idefics3ImageConfig(longest_edge=4 * 32, max_image_size=32))
    ref = _hf_features(model, frames.pixel_values)
    err = rel_err(embed(path, tmp_path / "e.npy", "--image", tmp_path / "i.png"), ref.reshape(-1, ref.shape[-1]))
    print(f"idefics3 square llama.cpp {outtype}: {err:.2e}")
    assert err <= bound


# -- Qwen2-VL (2-D RoPE tower + 2x2 merger), written by llama.cpp -------------------------------------
@pytest.mark.parametrize("mlp_ratio,outtype,bound",
                         [(1, "f32", BOUND), (1, "f16", LCP_BOUNDS["f16"]), (2, "f32", BOUND)],
                         ids=["square-f32", "square-f16", "ff64-f32"])
@pytest.mark.children
def test_qwen2vl_llama_cpp_file_equals_hf(tmp_path, mlp_ratio, outtype, bound):
    """llama.cpp writes Qwen2-VL's feed_forward_length as the merger's output width (48 here; the
    FFN is 32 * mlp_ratio): the width comes from the tensors. Depth 3: with 2 the converter's
    tensor map has no merger.mlp.2."""
    from test_models_qwen2vl import _hf_features, _png, _text_config

    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    torch.manual_seed(0)
    vc = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, num_heads=4, depth=3, embed_dim=32,
              hidden_size=48, mlp_ratio=mlp_ratio)
    cfg = tf.Qwen2VLConfig(vision_config=vc, text_config=_text_config(), attn_implementation="eager")
    model = hf_refs.randomize(tf.Qwen2VLForConditionalGeneration(cfg), 0)
    model.save_pretrained(tmp_path / "hf")
    Qwen2VLImageProcessorPil().save_pretrained(tmp_path / "hf")
    _png(tmp_path / "a.png", (50, 90), 1)
    path = lcp_convert.convert(tmp_path / "hf", tmp_path / "m.gguf", outtype)
    assert read_gguf(path).metadata["clip.vision.feed_forward_length"] == 48
    hp = Qwen2VLImageProcessorPil()(images=[Image.open(tmp_path / "a.png")], return_tensors="np")
    ref = _hf_features(model, hp["pixel_values"], hp["image_grid_thw"].tolist())
    err = rel_err(embed(path, tmp_path / "e.npy", "--image", tmp_path / "a.png"), ref)
    print(f"qwen2vl mlp_ratio {mlp_ratio} llama.cpp {outtype}: {err:.2e}")
    assert err <= bound


# -- Pixtral (LLaVA wrapper), written by llama.cpp -------------------------------------------------------
@pytest.mark.children
@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_pixtral_llama_cpp_file_equals_hf(tmp_path, outtype):
    """An image smaller than image_size (kept, sides multiples of the patch) against HF's processor
    and get_image_features. llama.cpp's file says nothing of the projector's GELU, so graphdsl runs
    clip.cpp's tanh form where HF has erf: 1.4e-4 measured in f32, under the 1e-3 bound."""
    from test_models_pixtral import _hf_features, _save_folder

    from PIL import Image
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
    torch.manual_seed(0)
    vc = tf.PixtralVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
                                image_size=64, patch_size=8, hidden_act="silu")  # 3: the map needs mm.2's index
    cfg = tf.LlavaConfig(vision_config=vc, text_config=hf_refs.tiny_llama(), vision_feature_layer=-1,
                         vision_feature_select_strategy="full", image_token_index=10, attn_implementation="eager")
    model = hf_refs.randomize(tf.LlavaForConditionalGeneration(cfg), 0)
    _save_folder(model, tmp_path / "hf")
    pre = PixtralImageProcessorPil(size={"longest_edge": 64}, patch_size={"height": 8, "width": 8})
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(pre.image_mean),
                                                                         "image_std": list(pre.image_std)}))
    _png(tmp_path / "a.png", 32)
    path = lcp_convert.convert(tmp_path / "hf", tmp_path / "m.gguf", outtype)
    px = pre(Image.open(tmp_path / "a.png"), return_tensors="np")
    (h, w), = px["image_sizes"]
    ref = np.concatenate(_hf_features(model, [px["pixel_values"][0][:, :h, :w]]))
    err = rel_err(embed(path, tmp_path / "e.npy", "--image", tmp_path / "a.png"), ref)
    print(f"pixtral llama.cpp {outtype}: {err:.2e}")
    assert err <= LCP_BOUNDS[outtype]


# -- Voxtral (Whisper encoder + stacked-frame projector), written by llama.cpp --------------------------
@pytest.fixture(scope="module")
def voxtral(tmp_path_factory):
    """3 layers: with 2, the converter's tensor map has no block 2 for conv2 (it maps conv{bid})."""
    d = tmp_path_factory.mktemp("voxtral")
    torch.manual_seed(0)
    ac = tf.VoxtralEncoderConfig(num_mel_bins=80, max_source_positions=1500, hidden_size=64, num_attention_heads=4,
                                 num_hidden_layers=3, intermediate_size=256)
    cfg = tf.VoxtralConfig(audio_config=ac, text_config=hf_refs.tiny_llama(), attn_implementation="eager")
    model = hf_refs.randomize(tf.VoxtralForConditionalGeneration(cfg), 1)
    model.save_pretrained(d / "hf")
    return d, model


def voxtral_ref(model) -> np.ndarray:
    import soundfile
    pcm, sr = soundfile.read(WAV, dtype="float32")
    mel = tf.WhisperFeatureExtractor(feature_size=80)(pcm, sampling_rate=sr, return_tensors="pt")["input_features"]
    with torch.no_grad():
        out = model.get_audio_features(mel).pooler_output.numpy()
    return out.reshape(-1, model.config.text_config.hidden_size)


@pytest.mark.children
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16"])
def test_voxtral_llama_cpp_file_equals_hf(voxtral, outtype):
    """llama.cpp stores the conv stem's biases as (n, 1) columns: read as (n,)."""
    d, model = voxtral
    path = lcp_convert.convert(d / "hf", d / f"v-{outtype}.gguf", outtype)
    assert read_gguf(path).tensors["a.conv1d.1.bias"].shape == (64, 1)
    err = rel_err(embed(path, d / f"v-{outtype}.npy", "--audio", WAV), voxtral_ref(model))
    print(f"voxtral llama.cpp {outtype}: {err:.2e}")
    assert err <= LCP_BOUNDS[outtype]


# -- graphdsl's own convert: square FFN round trip, f16 / bf16 tables --------------------------------------
def llava_folder(path, ff: int, seed=0):
    """LLaVA: CLIP 32 px / 8, d 64, 3 layers, FFN width ``ff``; projector -> 96."""
    torch.manual_seed(seed)
    vc = tf.CLIPVisionConfig(hidden_size=64, intermediate_size=ff, num_attention_heads=4, num_hidden_layers=3,
                             image_size=32, patch_size=8)
    tc = tf.LlamaConfig(hidden_size=96, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=4, vocab_size=128)
    cfg = tf.LlavaConfig(vision_config=vc, text_config=tc, image_token_index=100, attn_implementation="eager")
    model = hf_refs.randomize(tf.LlavaForConditionalGeneration(cfg), seed + 1)
    model.save_pretrained(path)
    return model


def llava_ref(model, img) -> np.ndarray:
    from PIL import Image
    proc = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    px = proc(Image.open(img), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model.model.get_image_features(px, vision_feature_layer=-2,
                                              vision_feature_select_strategy="default").pooler_output[0].numpy()


@pytest.mark.children
def test_graphdsl_square_ffn_round_trips(tmp_path):
    """graphdsl convert of a tower with n_ff == n_embd, read back by graphdsl embed: HF's numbers
    (the legacy guess swapped both layers: 0.32 relative L2)."""
    from graphdsl.convert import convert
    from graphdsl.convert.writer import KEY_WRITER
    model = llava_folder(tmp_path / "hf", ff=64)
    _png(tmp_path / "img.png", 40, seed=1)
    convert(tmp_path / "hf", tmp_path / "m.gguf", "f32")
    assert read_gguf(tmp_path / "m.gguf").metadata[KEY_WRITER].startswith("graphdsl ")
    err = rel_err(embed(tmp_path / "m.gguf", tmp_path / "e.npy", "--image", tmp_path / "img.png"),
                  llava_ref(model, tmp_path / "img.png"))
    assert err <= BOUND


@pytest.mark.children
@pytest.mark.parametrize("table_type", ["f16", "bf16"])
def test_f16_and_bf16_tables_equal_hf_with_the_same_tables(tmp_path, table_type):
    """v.position_embd, v.class_embd and a.position_embd stored f16 / bf16 (llama.cpp's legacy
    LLaVA script writes every 2-D .weight f16): cast to f32 in the graph, equal to HF holding the
    same rounded tables."""
    from graphdsl.convert import convert
    from test_from_gguf import voxtral_folder
    llava = llava_folder(tmp_path / "llava", ff=128)
    vox = voxtral_folder(tmp_path / "vox", n_mel=80, n_ctx=1500)
    _png(tmp_path / "img.png", 40, seed=2)
    convert([tmp_path / "llava", tmp_path / "vox"], tmp_path / "mm.gguf", "f32")
    tables = ("v.position_embd.weight", "v.class_embd", "a.position_embd.weight")
    path = rewrite(tmp_path / "mm.gguf", tmp_path / "t.gguf", types=dict.fromkeys(tables, table_type))
    assert [read_gguf(path).tensors[n].dtype for n in tables] == [table_type] * 3
    rounding = torch.float16 if table_type == "f16" else torch.bfloat16
    with torch.no_grad():
        for m in (llava, vox):
            for name, p in m.named_parameters():
                if name.endswith(("position_embedding.weight", "class_embedding", "embed_positions.weight")):
                    p.copy_(p.to(rounding).float())
    got = embed(path, tmp_path / "e.npy", "--image", tmp_path / "img.png", "--audio", WAV)
    ref = llava_ref(llava, tmp_path / "img.png")
    assert rel_err(got[:len(ref)], ref) <= BOUND
    assert rel_err(got[len(ref):], voxtral_ref(vox)) <= BOUND


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_text_tables_in_f16_and_bf16(backend):
    """BERT's position and token-type tables as 16-bit weights: cast in the graph, the stored values
    added (to f32 rounding: the reference backend sums in another order)."""
    import graphdsl
    from graphdsl import Graph
    from graphdsl.inp_embd import build_inp_embd
    rng = np.random.default_rng(0)
    tok, pos, types = (rng.standard_normal(s).astype(np.float32) for s in ((20, 32), (16, 32), (2, 32)))
    g = Graph("text")
    ids = g.input("ids", (5,), "i32")
    with g.weight_types({"position_embd.weight": "f16", "token_types.weight": "bf16"}):
        g.output("embd", build_inp_embd("text", ids, n_vocab=20, n_embd=32, n_pos=16, n_types=2))
    assert {n.op for n in g.nodes} >= {"cast"}
    weights = {"token_embd.weight": tok, "position_embd.weight": pos.astype(np.float16),
               "token_types.weight": dt.f32_to_bf16(types)}
    x = np.array([3, 0, 19, 7, 7], np.int32)
    out = graphdsl.compile(g, backend, weights=weights)(ids=x)["embd"]
    ref = tok[x] + dt.bf16_to_f32(dt.f32_to_bf16(types))[0] + pos.astype(np.float16).astype(np.float32)[:5]
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
