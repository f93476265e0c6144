"""preprocess.phi4_audio against HF's Phi4MultimodalFeatureExtractor: log-mel within 1e-5 absolute
(measured 1.9e-6: HF's mel product runs in float32 in another order), the filter bank within
1e-7, and the row count HF's audio_embed_sizes says."""
from __future__ import annotations

import numpy as np
import pytest
from hf_refs import need_torch

from graphdsl.preprocess import phi4_audio as pa

BOUND = 1e-5


@pytest.fixture(scope="module")
def fe():
    need_torch()
    from transformers import Phi4MultimodalFeatureExtractor
    return Phi4MultimodalFeatureExtractor()


@pytest.mark.parametrize("n", [401, 3 * 16000, 30 * 16000 + 123])
def test_features_match_hf(fe, n):
    x = (np.random.default_rng(n).standard_normal(n) * 0.1).astype(np.float32)
    ref = fe(x, sampling_rate=16000, return_tensors="np")
    got = pa.phi4_audio_features(x)
    assert ref["audio_input_features"][0].shape == got.shape
    assert np.abs(ref["audio_input_features"][0] - got).max() <= BOUND
    assert int(ref["audio_embed_sizes"][0]) == pa.n_embed_rows(got.shape[0])
    assert np.abs(fe.mel_filters - pa.mel_filters()).max() <= 1e-7


def test_negative_control_without_preemphasis_fails(fe, monkeypatch):
    x = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    ref = fe(x, sampling_rate=16000, return_tensors="np")["audio_input_features"][0]
    monkeypatch.setattr(pa, "PREEMPH", 0.0)
    assert np.abs(pa.phi4_audio_features(x) - ref).max() > 100 * BOUND


def test_bad_input_raises():
    with pytest.raises(ValueError, match="fewer than one"):
        pa.phi4_audio_features(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="mono"):
        pa.phi4_audio_features(np.zeros((2, 1000), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        pa.phi4_audio_features(np.full(1000, np.nan, np.float32))
    with pytest.raises(ValueError, match="16000 Hz"):
        pa.phi4_audio_features(np.zeros(1000, np.float32), sr=8000)
