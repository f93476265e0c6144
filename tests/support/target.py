"""The backend the ggml tests run on, from GRAPHDSL_TEST_BACKEND: "cpu" (default), "blas", "cuda",
a device name, "rpc://host:port", or "rpc" (conftest starts a local server with
graphdsl.backends.rpc.spawn_rpc_server and rewrites it to rpc://127.0.0.1:N). The reference is
always the NumPy interpreter."""
import os

import numpy as np

BACKEND = os.environ.get("GRAPHDSL_TEST_BACKEND", "cpu")

# CUDA multiplies f32 matrices in TF32 (tests/support/tf32.py says where), so the "f32" policy is held
# there to bounds set by emulating TF32 on the CPU (tests/unit/test_tf32_bounds.py), about 3x above
# what the emulation measures: relative L2 for whole models and comparisons of whole outputs,
# the normalised max error for single ops (the "fast" policy's bound: f16 has TF32's mantissa).
TF32 = BACKEND.lower().startswith("cuda")
TF32_REL = 3e-3
TF32_OP = 2e-3


def assert_close(out, ref, rtol=1e-5, atol=1e-5):
    """Element-wise closeness for f32 arithmetic; relative L2 within TF32_REL on a TF32 device."""
    if not TF32:
        np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)
        return
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err = np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)
    assert err <= TF32_REL, f"relative L2 {err:.2e} > {TF32_REL:.0e} (TF32)"
