"""Qwen3-VL checkpoints whose processor or vision_config differ from the defaults: HF folder (tiny random
model + a preprocessor_config.json) -> graphdsl convert -> the file's rows (from_gguf, the arch's frames
hook, one packed graph: tests/test_models_qwen3vl.embed_file) equal HF's processor (loaded from the same
folder) + vision model, main and deepstack columns (1e-5 rel L2, f32); the same file with each carried
key dropped (or set to the default's value) must not match; refused settings stop convert.
"""
from __future__ import annotations

import pytest
from hf_refs import need_torch
from settings_util import controls_miss, convert_and_match, convert_refuses
from test_models_qwen3vl import PROCESSOR, _hf_processed, _hf_stack, _png, _save, embed_file, qwen3_tiny

BOUND = 1e-5
V, Q = "clip.vision.", "graphdsl.qwen2vl."
CASES = {  # preprocessor_config.json over Qwen3-VL's, keys dropped (or (key, wrong value)) for the controls
    "pixels+bilinear+norm": ({"size": {"shortest_edge": 6400, "longest_edge": 12800}, "resample": 2,
                              "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25]},
                             [V + "image_min_pixels", V + "image_max_pixels", Q + "resample",
                              (V + "image_mean", [0.48145466, 0.4578275, 0.40821073])]),
    "old-keys+no-rescale+no-normalize": ({"size": None, "min_pixels": 6400, "max_pixels": 12800, "do_rescale": False,
                                          "do_normalize": False},
                                         [V + "image_min_pixels", V + "image_max_pixels", Q + "do_rescale",
                                          Q + "do_normalize"]),
}
# vision_config overrides, the processor's merge_size, and the keys whose loss must break the match
CONFIG_CASES = {
    "merge3": ({"spatial_merge_size": 3}, 3, [(V + "spatial_merge_size", 2)]),
    "table36+deepstack-1-2": ({"num_position_embeddings": 36, "deepstack_visual_indexes": [1, 2]}, 2,
                              [("clip.vision.is_deepstack_layers", [True, True, False])]),
}


def _embed(gguf, paths):
    try:
        return embed_file(gguf, paths)[0]
    except ValueError:  # a file that no longer loads (a control)
        return None


def _check(model, folder, tmp_path, case, keys, sizes=((50, 90), (200, 300))):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, (p, size) in enumerate(zip(paths, sizes)):
        _png(p, size, i + 1)
    ref = _hf_stack(model, *_hf_processed(folder, paths))
    embed = lambda g, out: _embed(g, paths)  # noqa: E731
    gguf = convert_and_match(folder, ref, embed, tmp_path, case, BOUND)
    controls_miss(gguf, ref, embed, keys, tmp_path)


@pytest.mark.children
@pytest.mark.parametrize("case", list(CASES))
def test_non_default_processor_matches_hf(tmp_path, case):
    need_torch()
    _, model = qwen3_tiny()
    pre, keys = CASES[case]
    folder = tmp_path / "hf"
    _save(model, folder, {k: v for k, v in {**PROCESSOR, **pre}.items() if v is not None})
    _check(model, folder, tmp_path, case, keys)


@pytest.mark.children
@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_vision_config_survives_the_file(tmp_path, case):
    need_torch()
    overrides, merge, keys = CONFIG_CASES[case]
    _, model = qwen3_tiny(**overrides)
    folder = tmp_path / "hf"
    _save(model, folder, {**PROCESSOR, "merge_size": merge})
    _check(model, folder, tmp_path, case, keys, sizes=((173, 95), (128, 211)))


@pytest.mark.children
@pytest.mark.parametrize("pre,shown", [({"merge_size": 4}, "merge_size=4"), ({"patch_size": 14}, "patch_size=14")])
def test_refused_settings_stop_convert(tmp_path, pre, shown):
    _, model = qwen3_tiny()
    folder = tmp_path / "hf"
    _save(model, folder)
    convert_refuses(folder, tmp_path, pre, shown)
