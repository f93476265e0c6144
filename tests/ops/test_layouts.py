"""Every op x every input layout x both precision policies: ggml vs the NumPy reference.

Layouts (tests/support/layouts.py): contiguous, transposed, permuted, sliced, strided, one-row slices
(size-1 dims with odd strides), views of views, views of permutes and conv outputs, over the op
cases of tests/support/op_cases.py plus cases whose shapes have size-1 dims. Each op runs in a child
process (tests/support/layout_run.py); a combination that aborts the child is a failure and the child is
restarted after it, so one abort does not hide the rest. Bounds are those of tests/ops/test_ops.py
(normalised max error 1e-5 for "f32", 2e-3 for "fast"); integer outputs must match exactly.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from layouts import ALL_CASES
from paths import SUPPORT

pytestmark = pytest.mark.children  # each op's layouts run in a child process (an abort must not kill pytest)

HERE = SUPPORT  # the children import the test helpers (and layout_run.py lives there)

OPS = sorted({c.op for c in ALL_CASES})
# Clear refusals the matrix accepts (ggml has no form for them); anything else refused fails.
ALLOWED_REFUSALS = ("a strided slice of the last axis has no ggml view",)


def run_matrix(op: str, env_extra: dict | None = None, timeout: float = 60) -> dict:
    """op -> {combination: ("ok", err, tol) | ("refused", msg) | ("fail", msg) | ("crash", msg)}.

    A child that dies or hangs is charged to the combination it had begun; the next child
    starts after it."""
    # GGML_NO_BACKTRACE: ggml's abort handler would otherwise attach gdb, which can hang
    env = {**os.environ, "GGML_NO_BACKTRACE": "1", **(env_extra or {})}
    results: dict[str, tuple] = {}
    while True:
        cmd = [sys.executable, str(HERE / "layout_run.py"), op, *results]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=HERE)
            stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            stdout, stderr, rc = _text(e.stdout), f"hung for {timeout} s", None
        current = None
        for line in stdout.splitlines():
            kind, _, rest = line.partition(" ")
            cid, _, detail = rest.partition(" ")
            if kind == "BEGIN":
                current = cid
            elif kind == "END":
                err, tol = map(float, detail.split())
                results[cid], current = ("ok", err, tol), None
            elif kind in ("REFUSED", "FAIL"):
                results[cid], current = (kind.lower(), detail), None
        if current is None:
            if rc != 0:
                raise AssertionError(f"layout child for {op} exited {rc} between combinations: {stderr[-2000:]}")
            return results
        asserts = [ln for ln in stderr.splitlines() if "GGML_ASSERT" in ln or "Error" in ln]
        results[current] = ("crash", f"exit {rc}: {(asserts or [stderr[-300:]])[0]}")


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def problems(results: dict) -> list[str]:
    out = []
    for cid, r in results.items():
        if r[0] == "ok" and not r[1] <= r[2]:
            out.append(f"{cid}: error {r[1]:.2e} > {r[2]:.0e}")
        elif r[0] == "refused" and not any(a in r[1] for a in ALLOWED_REFUSALS):
            out.append(f"{cid}: refused: {r[1][:200]}")
        elif r[0] in ("fail", "crash"):
            out.append(f"{cid}: {r[0]}: {r[1][:300]}")
    return out


@pytest.mark.parametrize("op", OPS)
def test_op_under_every_layout(op):
    results = run_matrix(op)
    assert results, f"no combinations ran for {op}"
    assert sum(r[0] == "ok" for r in results.values()) >= len(results) // 2, results
    bad = problems(results)
    assert not bad, f"{len(bad)} of {len(results)} combinations:\n" + "\n".join(bad)


def test_the_matrix_catches_the_old_contiguity_test():
    """Negative control: with the lowering's old `ggml_is_contiguous` test, the transpose of a
    (1, n) row (case add-unit1, a (13, 1) column fed transposed) reaches ggml's add kernel, which
    asserts and kills the child: the matrix must say so, and go on after it."""
    # on the CPU whatever the suite's backend: on RPC the assert would kill the shared server
    results = run_matrix("add", {"GRAPHDSL_LAYOUT_BREAK": "1", "GRAPHDSL_TEST_BACKEND": "cpu"})
    bad = problems(results)
    assert any(b.startswith("add-unit1/transposed/") and "GGML_ASSERT" in b for b in bad), bad
    assert "ok" == results["add-0/contiguous/f32"][0]  # the child was restarted after the abort
