"""The ISA caps `make test-isa` relies on, so that a machine with AVX-512 / AMX checks what a 2-core
AVX2 machine (AMD EPYC Zen 3) runs: oneDNN capped by ONEDNN_MAX_CPU_ISA=AVX2, ggml from PyPI's
portable AVX2 wheel (found before the tuned build through LD_LIBRARY_PATH). Each cap is read back
from graphdsl.devices() in a child process (both are read once, when the libraries load); under
`make test-isa` (GRAPHDSL_EXPECT_ISA=avx2) the running process must itself be capped, so that
target cannot pass on the tuned kernels by accident.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from isa import features

from graphdsl.backends import onednn

AVX512_UP = ("AVX512", "AVX512_BF16", "AVX512_VBMI", "AVX512_VNNI", "AMX_INT8", "LLAMAFILE")

CHILD = """
import json, numpy as np, graphdsl
from graphdsl import Graph, ops
g = Graph("p")
with g.weight_types({"w": "bf16"}):
    g.output("y", ops.mul_mat(g.input("x", (64, 256)), g.weight("w", (384, 256))))
run = graphdsl.compile(g, "cpu", n_threads=1, weights={"w": np.ones((384, 256), np.float32)})
run(x=np.ones((64, 256), np.float32))
print(json.dumps({"devices": {d["name"]: d["features"] for d in graphdsl.devices()},
                  "bf16_product_on": run.placement()["nodes"][g.outputs["y"].name]}))
"""


def _child(**env) -> dict:
    e = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300,
                       env={**e, **env})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.mark.children
@pytest.mark.skipif(not onednn.load(), reason=f"oneDNN backend: {onednn.status()}")
def test_onednn_max_cpu_isa_caps_the_dispatch_and_the_claims():
    """AVX2: oneDNN dispatches to avx2, has no bf16 kernel and so leaves bf16 products to ggml."""
    capped = _child(ONEDNN_MAX_CPU_ISA="AVX2")
    assert capped["devices"]["ONEDNN"]["ISA"] == "avx2" and capped["devices"]["ONEDNN"]["BF16"] == "0", capped
    assert capped["bf16_product_on"] == "CPU"
    free = _child()  # the control: uncapped, oneDNN takes the product wherever it has the kernel
    if free["devices"]["ONEDNN"]["BF16"] != "1":
        pytest.skip(f"this CPU's oneDNN has no bf16 kernel uncapped either ({free['devices']['ONEDNN']})")
    assert free["bf16_product_on"] == onednn.NAME and free["devices"]["ONEDNN"]["ISA"] != "avx2"


@pytest.mark.skipif(os.environ.get("GRAPHDSL_EXPECT_ISA") != "avx2",
                    reason="only under make test-isa (GRAPHDSL_EXPECT_ISA=avx2)")
def test_this_run_is_capped_to_avx2():
    cpu = features("CPU")
    assert cpu.get("AVX2") == "1" and not [f for f in AVX512_UP if cpu.get(f) == "1"], (
        f"ggml's CPU backend is not the portable AVX2 build: {cpu} "
        f"(LD_LIBRARY_PATH={os.environ.get('LD_LIBRARY_PATH')})")
    if onednn.load():
        assert features("ONEDNN").get("ISA") == "avx2", features("ONEDNN")
