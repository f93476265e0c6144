"""The config sweep (tests/support/sweep/): for every registered arch, random but valid configs of model
and processor, HF folder -> ``graphdsl convert`` -> ``graphdsl embed`` (subprocesses) against HF's
processor + model, <= 1e-5 rel L2 in f32. Cases 0 and 1 of each arch, when they meet the bound, run
two negative controls that must miss it: a block weight of the GGUF scaled by 1.2, and HF's
reference with a wrong processor setting.

``make test`` runs 2 cases per arch; ``make test-sweep`` 20 (GRAPHDSL_SWEEP_N); GRAPHDSL_SWEEP_ONLY=a,b
keeps those archs. A failure prints the case's config and the command line that reruns it
(tests/support/sweep_run.py, which keeps the files in build/sweep/).
"""
from __future__ import annotations

import os

import pytest
import sweep
from hf_refs import need_torch

from graphdsl.models import registry

N = int(os.environ.get("GRAPHDSL_SWEEP_N", "2"))
CASES = [(a, i) for a in sweep.ENTRIES for i in range(N)]
_RESULTS: dict = {}


def test_every_registered_arch_has_a_sweep_entry():
    missing = sorted(set(registry.ARCHS) - set(sweep.ENTRIES))
    assert not missing, f"registered archs without a sweep entry (tests/support/sweep/table.py): {missing}"
    assert not set(sweep.ENTRIES) - set(registry.ARCHS), "sweep entries for archs no longer registered"


def test_cases_are_a_function_of_arch_and_index():
    for entry in sweep.ENTRIES.values():
        a, b = sweep.case(entry, 3), sweep.case(entry, 3)
        assert a == b and a.seed != sweep.case(entry, 4).seed
        assert f"sweep_run.py {entry.arch} 3" in a.command


def _results(arch, tmp_path_factory):
    """Every case of ``arch`` as one batch (HF in this process, the CLI on a pool), once."""
    if arch not in _RESULTS:
        entry = sweep.ENTRIES[arch]
        why = entry.skip()
        if why:
            _RESULTS[arch] = why
        else:
            need_torch()
            res = sweep.run_arch(entry, range(N), tmp_path_factory.mktemp(f"sweep_{arch}"))
            _RESULTS[arch] = {r.case.index: r for r in res}
    return _RESULTS[arch]


@pytest.mark.parametrize("arch,index", CASES, ids=[f"{a}-{i}" for a, i in CASES])
def test_sweep_case(arch, index, tmp_path_factory):
    if not sweep.core.wanted(arch):
        pytest.skip(f"GRAPHDSL_SWEEP_ONLY={os.environ['GRAPHDSL_SWEEP_ONLY']}")
    results = _results(arch, tmp_path_factory)
    if isinstance(results, str):
        pytest.skip(results)
    r = results[index]
    print(r.report())
    assert r.ok(), r.report()
    for name, err in r.negatives.items():  # each control must miss the bound the case meets
        assert err > r.bound, f"negative control '{name}' passed ({err:.2e}): the comparison cannot see it\n" \
                                  + r.report()
    if index < 2 and not r.invalid:
        assert len(r.negatives) == 2 - (sweep.ENTRIES[arch].wrong is None), f"case {index} ran no negative control"


def test_mtmd_entries_draw_only_what_mtmd_runs():
    """MiniCPM-V and MobileVLM compare against llama.cpp's mtmd (tests/support/sweep/special.py): the
    generators keep to its hard-coded shapes, else mtmd aborts (GGML_ASSERT in a reshape) or
    preprocesses otherwise than the model."""
    from sweep.special import mtmd_slices_as_minicpmv
    for i in range(20):
        c = sweep.case(sweep.ENTRIES["mobilevlm"], i)
        assert c.config["image_size"] == 24 * c.config["patch_size"] and c.config["class_token"] is False
        (_, (h, w)), = c.media
        assert h == w
        c = sweep.case(sweep.ENTRIES["minicpmv"], i)
        assert "max_slices" not in c.config
        (_, (h, w)), = c.media
        assert mtmd_slices_as_minicpmv(w, h, c.config["image_size"], c.config["patch_size"])
    assert not mtmd_slices_as_minicpmv(359, 313, 56, 7)  # mtmd's float32 sizes: slices of 63 px, not 56
    assert not mtmd_slices_as_minicpmv(43, 108, 28, 7)  # Pillow resizes 43x108 -> 42x105 vertical pass first
