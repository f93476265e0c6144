"""graphdsl.embed.embed_files end to end: an mmproj GGUF (LLaVA vision + Voxtral audio, converted
from HF folders into one file) and a text GGUF (written with the gguf package: q8_0 token_embd +
a WordPiece vocabulary), an image file, a wav file and a prompt with <image> and <audio>, against
HF: CLIPImageProcessor + LLaVA's image features, WhisperFeatureExtractor + Voxtral's audio
features, and BertTokenizerFast on the same vocabulary (markers as added special tokens).
"""
from __future__ import annotations

from pathlib import Path

import hf_refs  # our helper: plain import, so a bug in it fails instead of skipping
import numpy as np
import pytest
from test_from_gguf import VOCAB, WIDTH, llava_folder, voxtral_folder, write_text_gguf

from graphdsl.convert import convert
from graphdsl.embed import embed_files

torch = pytest.importorskip("torch", reason="needs torch (pip install -e .[test])")
tf = pytest.importorskip("transformers", reason="needs transformers (pip install -e .[test])")

WAV = Path(__file__).parents[1] / "data" / "speech_16k.wav"  # 3.1 s: one 30 s window -> 1500 / 4 = 375 tokens
PROMPT = "USER: <image> what is this? <audio> and this. ASSISTANT:"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image
    d = tmp_path_factory.mktemp("embed")
    llava = llava_folder(d / "llava")
    vox = voxtral_folder(d / "vox", n_mel=80, n_ctx=1500)  # real Whisper windows: 80 mels x 3000 frames
    convert([d / "llava", d / "vox"], d / "mm.gguf", "f32")
    table = write_text_gguf(d / "text.gguf")
    (d / "tok").mkdir()
    (d / "tok" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    rgb = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "img.png")
    return d, llava, vox, table


def _reference(files, prompt):
    """HF's pieces of the prompt's sequence: token rows, image features, audio features, in order."""
    d, llava, vox, table = files
    from PIL import Image
    from transformers import (
        BertTokenizerFast,
        CLIPImageProcessor,
        WhisperFeatureExtractor,
    )
    tok = BertTokenizerFast.from_pretrained(d / "tok")
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<audio>"]})
    ids = tok(prompt)["input_ids"]
    marks = {tok.convert_tokens_to_ids("<image>"): "image", tok.convert_tokens_to_ids("<audio>"): "audio"}
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    px = proc(Image.open(d / "img.png"), return_tensors="pt")["pixel_values"]
    import soundfile
    pcm, sr = soundfile.read(WAV, dtype="float32")
    mel = WhisperFeatureExtractor(feature_size=80)(pcm, sampling_rate=sr, return_tensors="pt")["input_features"]
    with torch.no_grad():
        media = {"image": llava.model.get_image_features(px, vision_feature_layer=-2,
                                                         vision_feature_select_strategy="default").pooler_output[0],
                 "audio": vox.get_audio_features(mel).pooler_output}
    pieces, run = [], []
    for i in ids:
        if i in marks:
            pieces += [("text", table[run])] if run else []
            pieces.append((marks[i], media[marks[i]].numpy().reshape(-1, WIDTH)))
            run = []
        else:
            run.append(i)
    return pieces + ([("text", table[run])] if run else [])


def test_prompt_with_image_and_audio_equals_hf(files):
    d = files[0]
    out = embed_files(d / "mm.gguf", d / "text.gguf", images=[d / "img.png"], audios=[WAV], prompt=PROMPT,
                      backend="cpu")
    ref = _reference(files, PROMPT)
    assert [(s.kind, s.n_tokens) for s in out.spans] == [(k, len(r)) for k, r in ref]
    assert [s.kind for s in out.spans] == ["text", "image", "text", "audio", "text"]
    assert out.spans[1].n_tokens == 16 and out.spans[3].n_tokens == 375 and out.embd.shape[1] == WIDTH
    for s, (kind, r) in zip(out.spans, ref):
        assert hf_refs.rel_err(out.embd[s.start:s.start + s.n_tokens], r) <= 1e-5, s

    # the same sequence from ids (markers as strings), and the media alone
    toks = [2, 5, 6, "<image>", 7, 8, 9, 10, "<audio>", 3]
    by_ids = embed_files(d / "mm.gguf", d / "text.gguf", images=[d / "img.png"], audios=[WAV], tokens=toks,
                         backend="cpu")
    img = out.embd[out.spans[1].start:out.spans[1].start + 16]
    aud = out.embd[out.spans[3].start:out.spans[3].start + 375]
    np.testing.assert_array_equal(by_ids.embd[3:19], img)
    np.testing.assert_array_equal(by_ids.embd[:3], files[3][[2, 5, 6]])
    assert by_ids.embd.shape == (3 + 16 + 4 + 375 + 1, WIDTH)
    same = embed_files(d / "mm.gguf", d / "text.gguf", images=[d / "img.png"], tokens="2, 5,6,<image>,3",
                       backend="cpu")
    np.testing.assert_array_equal(same.embd[3:19], img)
    media = embed_files(d / "mm.gguf", images=[d / "img.png"], audios=[WAV], backend="cpu")
    assert [(s.kind, s.start, s.n_tokens) for s in media.spans] == [("image", 0, 16), ("audio", 16, 375)]
    np.testing.assert_array_equal(media.embd, np.concatenate([img, aud]))


def test_errors(files, tmp_path):
    d = files[0]
    mm, txt, img = d / "mm.gguf", d / "text.gguf", d / "img.png"
    with pytest.raises(ValueError, match=r"prompt have 2 <image> marker\(s\) but 1 image input"):
        embed_files(mm, txt, images=[img], prompt="<image> a <image>")
    with pytest.raises(ValueError, match=r"have 0 <audio> marker\(s\) but 1 audio input"):
        embed_files(mm, txt, images=[img], audios=[WAV], prompt="<image> a")
    with pytest.raises(ValueError, match=r"tokens have 1 <image> marker\(s\) but 0 image input"):
        embed_files(mm, txt, tokens=[2, "<image>", 3])
    with pytest.raises(ValueError, match="need text_model"):
        embed_files(mm, images=[img], prompt="<image> what")
    with pytest.raises(ValueError, match="not both"):
        embed_files(mm, txt, prompt="a", tokens=[1])
    with pytest.raises(ValueError, match="'x' is neither an integer id nor a marker"):
        embed_files(mm, txt, tokens="2,x")
    with pytest.raises(ValueError, match="nothing to embed"):
        embed_files(mm)
    with pytest.raises(ValueError, match="markers must be two different strings"):
        embed_files(mm, images=[img], markers=("<m>", "<m>"))
    write_text_gguf(tmp_path / "narrow.gguf", n_embd=64)
    with pytest.raises(ValueError, match=r"projector gives width 96, but the text model .*narrow.gguf has n_embd 64"):
        embed_files(mm, tmp_path / "narrow.gguf", prompt="what")
    convert(d / "llava", tmp_path / "v.gguf")
    with pytest.raises(ValueError, match=r"v\.gguf: no audio encoder, but 1 audio input"):
        embed_files(tmp_path / "v.gguf", audios=[WAV])
    with pytest.raises(ValueError, match=r"\[get_rows\] .*ids must lie in \[0, 20\), got \[2, 99\]"):
        embed_files(mm, txt, tokens=[2, 99], backend="cpu")
