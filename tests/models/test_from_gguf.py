"""graphdsl.models.from_gguf / config_from_gguf and text.from_gguf: GGUF files -> blocks + weights.

The numbers of every (model, outtype) pair against HF are in test_convert.py (which reads its
files through from_gguf); here: the combined vision + audio file, per-tensor types and weights
used in place, Gemma 3's quantized input projection, text files written with the gguf package,
and the errors. The folder and text-file helpers are shared with test_embed_files.py.
"""
from __future__ import annotations

import re

import hf_refs  # our helper: plain import, so a bug in it fails instead of skipping
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter, TokenType, quants

import graphdsl
from graphdsl.convert import convert
from graphdsl.convert.hf import prepare
from graphdsl.convert.info import describe
from graphdsl.gguf_io.vocab import phantom
from graphdsl.convert.writer import tensor_type, write_gguf
from graphdsl.embed import Embedder
from graphdsl.gguf_io import load_mmproj
from graphdsl.models import clip, from_gguf, siglip, text, whisper_enc

torch = pytest.importorskip("torch", reason="needs torch (pip install -e .[test])")
tf = pytest.importorskip("transformers", reason="needs transformers (pip install -e .[test])")

WIDTH = 96  # the decoder width: both projectors and the text table produce it
LLAMA = dict(hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=4, vocab_size=128)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "user", ":", "what", "is", "this", "?", "and", "hear",
         "assistant", "a", "cat", "look", "##s", "##ing", "."]


# -- helpers shared with test_embed_files.py ---------------------------------------------------------------
def llava_folder(path, seed=0):
    """A LLaVA (CLIP 32px/8, d 64, 3 layers; feature layer -2; projector -> 96) saved as an HF folder."""
    torch.manual_seed(seed)
    vc = tf.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
                             image_size=32, patch_size=8)
    cfg = tf.LlavaConfig(vision_config=vc, text_config=tf.LlamaConfig(**LLAMA), image_token_index=100,
                         attn_implementation="eager")
    model = hf_refs.randomize(tf.LlavaForConditionalGeneration(cfg), seed + 1)
    model.save_pretrained(path)
    return model


def voxtral_folder(path, n_mel=16, n_ctx=32, seed=0):
    """A Voxtral (Whisper encoder d 64, 2 layers; 4 frames stacked -> 96) saved as an HF folder."""
    torch.manual_seed(seed)
    ac = tf.VoxtralEncoderConfig(num_mel_bins=n_mel, max_source_positions=n_ctx, hidden_size=64, num_attention_heads=4,
                                 num_hidden_layers=2, intermediate_size=256)
    cfg = tf.VoxtralConfig(audio_config=ac, text_config=tf.LlamaConfig(**LLAMA), attn_implementation="eager")
    model = hf_refs.randomize(tf.VoxtralForConditionalGeneration(cfg), seed + 1)
    model.save_pretrained(path)
    return model


def write_text_gguf(path, n_embd=WIDTH, qtype=GGMLQuantizationType.Q8_0, model="bert", seed=0):
    """A text GGUF written with the gguf package: token_embd (quantized) + a WordPiece vocabulary in
    llama.cpp's phantom-space form. Returns the table as the file's values (dequantized)."""
    table = np.random.default_rng(seed).standard_normal((len(VOCAB), n_embd)).astype(np.float32)
    data = quants.quantize(table, qtype)
    w = GGUFWriter(str(path), arch="bert")
    w.add_embedding_length(n_embd)
    w.add_tokenizer_model(model)
    w.add_token_list([phantom(t) for t in VOCAB])
    w.add_token_types([TokenType.CONTROL if t.startswith("[") else TokenType.NORMAL for t in VOCAB])
    for add, tok in ((w.add_bos_token_id, "[CLS]"), (w.add_eos_token_id, "[SEP]"), (w.add_sep_token_id, "[SEP]"),
                     (w.add_unk_token_id, "[UNK]"), (w.add_pad_token_id, "[PAD]")):
        add(VOCAB.index(tok))
    w.add_tensor("token_embd.weight", data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return quants.dequantize(data, qtype)


def in_place(exe) -> bool:
    """Whether the CPU executor uses every weight in place from the file's memory map (no copy)."""
    return set(exe._mapped) == set(exe.graph.weights)


def hf_image(llava, px):
    with torch.no_grad():
        return llava.model.get_image_features(torch.from_numpy(px[None]), vision_feature_layer=-2,
                                              vision_feature_select_strategy="default").pooler_output[0].numpy()


def hf_audio(vox, mel):
    with torch.no_grad():
        return vox.get_audio_features(torch.from_numpy(mel)).pooler_output.numpy()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    return d, llava_folder(d / "llava"), voxtral_folder(d / "vox")


# -- mmproj files ------------------------------------------------------------------------------------------
def test_combined_vision_audio_file(folders, tmp_path):
    """One q8_0 mmproj from a LLaVA and a Voxtral folder: both blocks, their file types, weights in place."""
    d, llava, vox = folders
    path = tmp_path / "mm.gguf"
    types = convert([d / "llava", d / "vox"], path, "q8_0")
    m = from_gguf(path)
    cfg = m.config
    assert (cfg.vision.projector_type, cfg.audio.projector_type) == ("mlp", "voxtral")
    assert isinstance(m.vision, clip.ClipVision) and isinstance(m.audio, whisper_enc.WhisperEncoder)
    assert set(m.media) == {"image", "audio"} and m.vision.n_out == m.audio.n_out == WIDTH
    assert clip.config_from_gguf(path) == clip.config_from_gguf(load_mmproj(path)) == m.vision.cfg
    assert whisper_enc.config_from_gguf(cfg).n_ctx == 32 and m.audio.cfg.stack_factor == 4
    ic = m.image_config()
    assert (ic.mode, ic.size, ic.crop_size) == ("clip", 32, (32, 32))
    for block, build in ((m.vision, clip.build), (m.audio, whisper_enc.build)):
        g = build(block.cfg)
        assert {n: w.dtype.name for n, w in g.weights.items()} == {n: types[n] for n in g.weights}
        assert {types[n] for n in g.weights} == {"f32", "q8_0"}
        assert in_place(graphdsl.compile(g, "cpu", weights={n: m.weights[n] for n in g.weights}))
    rng = np.random.default_rng(0)
    px = rng.standard_normal((3, 32, 32)).astype(np.float32)
    mel = rng.standard_normal((1, 16, 64)).astype(np.float32)
    out = Embedder(None, m.media, weights=m.weights)([("image", px), ("audio", mel)])
    assert [(s.kind, s.n_tokens) for s in out.spans] == [("image", 16), ("audio", 8)]
    assert hf_refs.rel_err(out.embd[:16], hf_image(llava, px)) < 2e-2  # q8_0 bounds of test_convert.py
    assert hf_refs.rel_err(out.embd[16:], hf_audio(vox, mel)) < 3e-2
    with pytest.raises(ValueError, match="a second vision encoder"):
        convert([d / "llava", d / "llava"], tmp_path / "x.gguf")


def test_gemma3_quantized_projection_file(tmp_path):
    """A file that stores mm.input_projection (d_text, d_vision) q8_0: read as the mul_mat layout.
    The converter's own files keep HF's layout (f16 when quantized), read through a transpose."""
    _, model = hf_refs.gemma3_tiny()
    model.save_pretrained(tmp_path / "g")
    arch, kv, tensors = prepare(str(tmp_path / "g"))
    tensors["mm.input_projection.weight"] = np.ascontiguousarray(tensors["mm.input_projection.weight"].T)
    typed = {n: (a, tensor_type(n, a.shape, "q8_0")) for n, a in tensors.items()}
    typed["mm.input_projection.weight"] = (tensors["mm.input_projection.weight"], "q8_0")
    write_gguf(str(tmp_path / "q.gguf"), arch, kv, typed)
    convert(tmp_path / "g", tmp_path / "f.gguf", "q8_0")
    px = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model.model.get_image_features(px).pooler_output[0].numpy()
    for name, transposed, proj_type, bound in (("q", False, "q8_0", 2e-2), ("f", True, "f16", 1e-2)):
        m = from_gguf(tmp_path / f"{name}.gguf")
        c = m.vision.cfg
        assert isinstance(m.vision, siglip.SiglipVision) and (c.mm_proj_transposed, c.n_mm_embd) == (transposed, 48)
        g = siglip.build(c)
        assert g.weights["mm.input_projection.weight"].dtype.name == proj_type
        exe = graphdsl.compile(g, "cpu", weights=m.weights)
        assert in_place(exe)
        assert hf_refs.rel_err(exe(pixels=px[0].numpy())["embd"], ref) < bound


def _retyped(src, dst, **changes):
    """Rewrite a converted file's metadata (key -> new value), tensors unchanged."""
    arch, kv, tensors = prepare(str(src))
    kv = [(k, changes.get(k, v)) for k, v in kv]
    write_gguf(str(dst), arch, kv, {n: (a, "f32") for n, a in tensors.items()})
    return dst


def test_projector_errors(folders, tmp_path):
    d, _, _ = folders
    for folder, new, msg in ((d / "llava", "adapter", "vision projector type 'adapter' is not supported by graphdsl"),
                             (d / "llava", "ldp", "projector 'ldp' without mm.model.mlp.1.weight"),
                             (d / "vox", "ultravox", "audio projector type 'ultravox' is not supported by graphdsl"),
                             (d / "llava", "foo", "unknown vision projector type 'foo'")):
        path = _retyped(folder, tmp_path / f"{new}.gguf", **{"clip.projector_type": new})
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: .*{msg}"):
            from_gguf(path)
    assert "graphdsl.models: vision projector type 'adapter' is not supported" in describe(str(tmp_path / "adapter.gguf"))
    convert(d / "llava", tmp_path / "v.gguf")
    convert(d / "vox", tmp_path / "a.gguf")
    assert "graphdsl.models: whisper_enc.WhisperEncoder" in describe(str(tmp_path / "a.gguf"))
    with pytest.raises(ValueError, match=r"v\.gguf: no audio encoder"):
        whisper_enc.config_from_gguf(tmp_path / "v.gguf")
    with pytest.raises(ValueError, match=r"a\.gguf: no vision encoder"):
        clip.config_from_gguf(tmp_path / "a.gguf")
    with pytest.raises(ValueError, match="'mlp' is not a SigLIP one"):
        siglip.config_from_gguf(tmp_path / "v.gguf")
    from graphdsl.models import phi4_audio
    with pytest.raises(ValueError, match=r"a\.gguf: audio projector type 'voxtral' is not a Phi-4 one \(phi4\)"):
        phi4_audio.config_from_gguf(tmp_path / "a.gguf")
    with pytest.raises(ValueError, match="expected an mmproj path or MmprojConfig"):
        clip.config_from_gguf(42)


# -- text files -----------------------------------------------------------------------------------------------
def test_text_from_gguf(tmp_path):
    """token_embd q8_0 + a WordPiece vocabulary (gguf package): the table in place, the tokenizer as HF's BERT."""
    table = write_text_gguf(tmp_path / "t.gguf")
    block, weights, info = text.from_gguf(tmp_path / "t.gguf")
    assert (block.cfg.n_vocab, block.cfg.n_embd, block.cfg.wtype, block.cfg.n_pos) == (len(VOCAB), WIDTH, "q8_0", 0)
    assert list(weights) == ["token_embd.weight"] and info.special["bos"] == 2
    g = text.build(block.cfg, 5)
    exe = graphdsl.compile(g, "cpu", weights=weights)
    assert in_place(exe)
    ids = np.array([2, 7, 8, 9, 3], np.int32)
    np.testing.assert_array_equal(exe(ids=ids)["embd"], table[ids])  # get_rows dequantizes exactly
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    hf_tok = tf.BertTokenizerFast.from_pretrained(tmp_path)  # reads vocab.txt
    tok = text.tokenizer_of(info)
    for s in ("USER: what is this? Looks like a cat.", "hearing cats", "unknown zebra!"):
        assert tok.encode(s).tolist() == hf_tok(s)["input_ids"], s
    write_text_gguf(tmp_path / "l.gguf", model="llama")
    with pytest.raises(ValueError, match="'llama' vocabulary without an embedded tokenizer.huggingface.json"):
        text.tokenizer_of(text.from_gguf(tmp_path / "l.gguf").info)
