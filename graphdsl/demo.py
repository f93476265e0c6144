"""`graphdsl demo`: a small multimodal model, end to end, with no download and no argument.

1. Build (deterministically, cached under $GRAPHDSL_CACHE or ~/.cache/graphdsl) a model in
   llama.cpp's layout: an mmproj GGUF with a CLIP-style vision tower + LLaVA projector and a
   Whisper-style audio encoder + Voxtral projector, and a text GGUF with the token table and its
   tokenizer. Weights are seeded random numbers: the demo shows the machinery, not a trained model.
2. Load both files back as any GGUF is loaded: `graphdsl.models.from_gguf` (the mmproj's blocks,
   weights and image pre-processing), `models.text.from_gguf` and `models.text.tokenizer_of`.
3. Pre-process the bundled image (`data/demo_image.png`) and speech clip (`data/speech_16k.wav`),
   and split a prompt with `<image>` / `<audio>` markers into [text, image, text, audio, text].
4. Build that mixed batch as ONE graph (`graphdsl.embed.build_mixed`) and run it on the best
   device ("auto": accelerators first, CPU last).
5. Return the timings, spans, graph and executor; `graphdsl demo` (graphdsl.cli.demo) prints the
   summary, placement, per-stage timings and output shape, and draws the graph.

    >>> from graphdsl.demo import run_demo
    >>> result = run_demo()                     # doctest: +SKIP
"""
from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .models import Mmproj, from_gguf
from .models import text as text_models
from .models.clip import ClipConfig
from .models.text import TextModel
from .models.whisper_enc import WhisperEncConfig

VERSION = 1  # bump when the files the demo writes change
DATA = Path(__file__).parent / "data"
PROMPT = "USER: <image> What is in this picture? <audio> And what does the speaker say? ASSISTANT:"
WORDS = ("user", "assistant", "what", "is", "in", "this", "picture", "and", "does", "the", "speaker", "say", "a", "an",
         "of", "to", "it", "here", "there", "sound", "image", "audio", "describe", "listen", "look", "see", "hear",
         "house", "tree", "sun", "hill", "sky", "fox", "dog", "quick", "brown", "lazy", "jumps", "over")


@dataclass(frozen=True)
class DemoSpec:
    clip: ClipConfig
    whisper: WhisperEncConfig
    n_embd: int  # the decoder's width: both projectors and the token table produce it


def _spec(n_embd: int, clip: dict, whisper: dict) -> DemoSpec:
    """A CLIP tower (LLaVA-style feature layer -2) and a Whisper encoder (80 mels, 4 frames a row)
    whose projectors both give the decoder's width ``n_embd``."""
    return DemoSpec(ClipConfig(**clip, feature_layer=-2, n_mm_embd=n_embd),
                    WhisperEncConfig(n_mel=80, n_ctx=1500, stack_factor=4, n_mm_embd=n_embd, **whisper), n_embd)


SPECS = {
    # ViT-Ti/16 @ 224 and the Whisper-tiny encoder, at a 512-wide decoder.
    "small": _spec(512, dict(image_size=224, patch_size=16, n_embd=192, n_ff=768, n_head=3, n_layer=12),
                   dict(n_embd=384, n_head=6, n_layer=4, n_ff=1536)),
    # For tests: the same structure, tiny widths.
    "tiny": _spec(48, dict(image_size=32, patch_size=8, n_embd=32, n_ff=64, n_head=2, n_layer=3),
                  dict(n_embd=32, n_head=2, n_layer=2, n_ff=64)),
}


def cache_dir() -> Path:
    return Path(os.environ.get("GRAPHDSL_CACHE") or Path.home() / ".cache" / "graphdsl")


# -- 1. the model files ------------------------------------------------------------------------
def _init(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic weights, seeded by name: norms near 1, biases near 0, matrices ~ N(0, 1/fan_in)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = rng.standard_normal(shape).astype(np.float32)
    if name.endswith(".bias"):
        return 0.02 * x
    if len(shape) == 1 or "ln" in name.split(".")[-2]:
        return 1.0 + 0.05 * x
    if "position_embd" in name or "class_embd" in name or "token_embd" in name:
        return 0.5 * x
    return x / np.sqrt(float(np.prod(shape[1:])))


def _tokenizer_json(words) -> str:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *dict.fromkeys([*words, "?", ":", ",", "."])])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok.to_str()


def _mmproj_kv(spec: DemoSpec) -> list:
    from gguf import Keys

    from .gguf_io import KEY_ACT, KEY_FEATURE_LAYER, KEY_MM_ACT, KEY_SELECT
    from .preprocess.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    V, A, c, w = Keys.ClipVision, Keys.ClipAudio, spec.clip, spec.whisper
    return [
        (Keys.General.NAME, "graphdsl demo"), (Keys.Clip.HAS_VISION_ENCODER, True), (Keys.Clip.HAS_AUDIO_ENCODER, True),
        (V.PROJECTOR_TYPE, "mlp"), (V.IMAGE_SIZE, c.image_size), (V.PATCH_SIZE, c.patch_size),
        (V.EMBEDDING_LENGTH, c.n_embd), (V.FEED_FORWARD_LENGTH, c.n_ff), (V.BLOCK_COUNT, c.n_layer),
        (V.Attention.HEAD_COUNT, c.n_head), (V.Attention.LAYERNORM_EPS, c.eps),
        (V.IMAGE_MEAN, list(OPENAI_CLIP_MEAN)), (V.IMAGE_STD, list(OPENAI_CLIP_STD)),
        (V.USE_GELU, False), (V.USE_SILU, False), (KEY_ACT.format(modality="vision"), c.act),
        (KEY_FEATURE_LAYER, np.array(c.layers, np.int32)), (V.PROJECTION_DIM, c.n_mm_embd),
        (KEY_MM_ACT, c.mm_act), (KEY_SELECT, c.select),
        (A.PROJECTOR_TYPE, "voxtral"), (A.NUM_MEL_BINS, w.n_mel), (A.EMBEDDING_LENGTH, w.n_embd),
        (A.FEED_FORWARD_LENGTH, w.n_ff), (A.BLOCK_COUNT, w.n_layer), (A.Attention.HEAD_COUNT, w.n_head),
        (A.Attention.LAYERNORM_EPS, w.eps), (KEY_ACT.format(modality="audio"), w.act),
        (A.Projector.STACK_FACTOR, w.stack_factor), (A.PROJECTION_DIM, w.n_mm_embd)]


def build_files(spec_name: str = "small", root: Path | None = None) -> tuple[Path, Path, bool]:
    """Write (or reuse) the demo's mmproj and text GGUF files; returns (mmproj, text, built_now)."""
    from gguf import Keys

    from .convert.writer import write_gguf
    from .gguf_io import MMPROJ_ARCH
    from .models import clip, whisper_enc
    spec = SPECS[spec_name]
    d = (root or cache_dir()) / f"demo-{spec_name}-v{VERSION}"
    mmproj, text = d / "mmproj.gguf", d / "text.gguf"
    if mmproj.exists() and text.exists():
        return mmproj, text, False
    d.mkdir(parents=True, exist_ok=True)
    shapes = {**clip.weight_shapes(spec.clip), **whisper_enc.weight_shapes(spec.whisper)}
    for i in range(max(spec.clip.layers), spec.clip.n_layer):  # blocks past the feature layer: stored, unused
        shapes.update({k.replace("blk.0.", f"blk.{i}."): s for k, s in shapes.items() if k.startswith("v.blk.0.")})
    tensors = {k: (_init(k, s), "f32") for k, s in sorted(shapes.items())}
    tensors["a.position_embd.weight"] = (whisper_enc.sinusoids(spec.whisper.n_ctx, spec.whisper.n_embd), "f32")
    # write_gguf is atomic: a demo killed mid-write leaves no half file for the next run to trust
    write_gguf(str(mmproj), MMPROJ_ARCH, _mmproj_kv(spec), tensors)
    tok = _tokenizer_json(WORDS)
    from tokenizers import Tokenizer
    vocab = sorted(Tokenizer.from_str(tok).get_vocab().items(), key=lambda kv: kv[1])
    arch = "graphdsl_demo_text"
    kv = [(Keys.General.NAME, "graphdsl demo text"), (f"{arch}.embedding_length", spec.n_embd),
          (Keys.Tokenizer.MODEL, "none"), (Keys.Tokenizer.LIST, [t for t, _ in vocab]),
          (Keys.Tokenizer.BOS_ID, 1), (Keys.Tokenizer.EOS_ID, 2), (Keys.Tokenizer.UNK_ID, 0),
          (Keys.Tokenizer.HF_JSON, tok)]
    write_gguf(str(text), arch, kv, {"token_embd.weight": (_init("token_embd.weight", (len(vocab), spec.n_embd)), "f32")})
    return mmproj, text, True


# -- 2. GGUF -> graphdsl models -------------------------------------------------------------------
@dataclass
class Models:
    """The demo's files read back: the mmproj's blocks (``models.from_gguf``), the text table
    (``models.text.from_gguf``) and the tokenizer of its vocabulary (``models.text.tokenizer_of``)."""

    mmproj: Mmproj
    text: TextModel
    tokenizer: object  # preprocess.TextTokenizer

    @property
    def media(self) -> dict:
        return self.mmproj.media

    def weights_for(self, graph) -> dict[str, np.ndarray]:
        """The (memory-mapped) weights a graph declares, from both files."""
        have = {**self.mmproj.weights, **self.text.weights}
        return {k: have[k] for k in graph.weights}


def load_models(mmproj_path, text_path) -> Models:
    tm = text_models.from_gguf(text_path)
    return Models(from_gguf(mmproj_path), tm, text_models.tokenizer_of(tm.info))


def demo_items(m: Models, image=None, audio=None) -> list:
    """The demo's batch: PROMPT split at its markers, with the (bundled) image and speech clip."""
    from .preprocess import chunk_prompt, preprocess_image, whisper_features
    px = preprocess_image(image or DATA / "demo_image.png", m.mmproj.image_config())
    mel = whisper_features(audio or DATA / "speech_16k.wav", m.mmproj.audio.cfg.n_mel)
    n = {"image": m.media["image"].n_tokens(*px.shape[1:]), "audio": m.media["audio"].n_tokens(1)}
    return chunk_prompt(PROMPT, tokenizer=m.tokenizer, media=[px, mel], n_tokens=n)


def model_graph(model: str = "demo", *, modality: str | None = None, spec: str = "small", image=None, audio=None,
                check_finite: bool = True):
    """(graph, inputs, weights, label) to inspect or time: the demo's mixed batch ("demo"), or one
    encoder of an mmproj GGUF run on `image` / `audio` (default: the bundled files), pre-processed
    and built exactly as ``embed_files`` does (its ``prepare_*`` and ``build_mixed``); check_finite
    as ``models.from_gguf``."""
    from .embed import build_mixed, prepare_audios, prepare_images
    from .models.registry import Prepared
    from .preprocess import preprocess_image
    if model == "demo":
        m = load_models(*build_files(spec)[:2])
        g, feeds, _ = build_mixed(demo_items(m, image, audio), m.text.block, m.media)
        return g, feeds, m.weights_for(g), f"demo ({spec}) mixed batch"
    mm = from_gguf(model, check_finite=check_finite)
    kind = modality or next(iter(mm.media), None)
    if kind not in mm.media:
        raise ValueError(f"{model} has no {kind or 'image or audio'} encoder "
                         f"(it has: {', '.join(mm.media) or 'none'})")
    if kind == "image" and mm.archs[kind].needs_text:  # its slices need the text model's markers: one whole view
        data = preprocess_image(image or DATA / "demo_image.png", mm.image_config())
    else:
        data, = (prepare_images(mm, [image or DATA / "demo_image.png"]) if kind == "image"
                 else prepare_audios(mm, [audio or DATA / "speech_16k.wav"]))
    items = [*data.items] if isinstance(data, Prepared) else [(kind, data)]  # (a Prepared needs a text model)
    g, feeds, _ = build_mixed(items, None, {kind: mm.media[kind]}, cross=())
    g.name = mm.archs[kind].name  # what inspect and bench print
    return g, feeds, {k: mm.weights[k] for k in g.weights}, f"{Path(model).name} ({kind})"


# -- 3-5. the run -----------------------------------------------------------------------------------
@dataclass
class DemoResult:
    """What `run_demo` ran: the output's shape and spans, seconds per stage, the graph with its
    executor and inputs, and the two files (``built``: written by this run, not found cached)."""

    embd_shape: tuple[int, ...]
    embd_dtype: str
    spans: list
    timings: dict[str, float]
    graph: object
    executor: object
    feeds: dict
    files: tuple[Path, Path]
    built: bool


def run_demo(backend: str = "auto", *, spec: str = "small", root: Path | None = None, n_threads: int | None = None,
             on_stage=None) -> DemoResult:
    """Build (or reuse) the demo's files, load them, pre-process the bundled media, build the mixed
    batch as one graph, compile and run it (a first run, which allocates, then a steady one).
    ``on_stage(name)`` is called after each stage. `graphdsl demo` prints the result (graphdsl.cli.demo)."""
    import graphdsl

    from .embed import build_mixed
    t: dict[str, float] = {}

    def stage(name, t0):
        t[name] = time.perf_counter() - t0
        if on_stage is not None:
            on_stage(name)
        return time.perf_counter()

    t0 = time.perf_counter()
    mmproj, text_path, built = build_files(spec, root)
    t0 = stage("build model files" if built else "model files (cached)", t0)
    m = load_models(mmproj, text_path)
    t0 = stage("load GGUF", t0)
    items = demo_items(m)
    t0 = stage("preprocess + tokenize", t0)
    g, feeds, spans = build_mixed(items, m.text.block, m.media)
    t0 = stage("build graph", t0)
    run = graphdsl.compile(g, backend, n_threads=n_threads, weights=m.weights_for(g))
    run(feeds)
    t0 = stage("compile + first run", t0)
    embd = run(feeds)["embd"]
    stage("run (steady)", t0)
    return DemoResult(tuple(embd.shape), str(embd.dtype), spans, t, g, run, feeds, (mmproj, text_path), built)
