"""Encoder benchmark rows, each in a process of its own: median time and peak RSS (ru_maxrss).

The parent (run.py's bench_encoder) builds the HF model once with random weights and writes what
each contender loads: the HF module (torch.save, fp32 and bf16), its ONNX export, one GGUF file
per weight type (graphdsl maps it, so weights are file pages used in place) and the inputs. A
child loads only what its contender needs (a graphdsl child imports no torch), runs it `repeat`
times after one warm-up, saves its output for the accuracy column and prints one JSON line.

    python benchmarks/rows.py SPEC.json     # the child side; run.py starts these
"""
from __future__ import annotations

import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _rss_mb() -> float:
    """Peak resident memory of this process (VmHWM): anonymous memory and the file pages it touched
    (mapped weights). Not ru_maxrss: Linux carries the parent's peak into it across fork + exec
    (exec folds the old address space's high-water mark in), so every child would report at least
    the parent's peak; VmHWM belongs to the address space exec made."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _graphdsl(spec, work):
    import graphdsl
    from graphdsl.gguf_io import read_gguf, weights_of
    with open(os.path.join(work, "model.pkl"), "rb") as f:
        m = pickle.load(f)
    g = m["build"](m["cfgs"][spec["wtype"]])
    run = graphdsl.compile(g, spec["backend"], n_threads=spec["threads"], precision=spec["precision"],
                           weights=weights_of(read_gguf(os.path.join(work, f"{spec['wtype']}.gguf")).tensors))
    out = next(iter(g.outputs))
    y = run(m["inputs"])[out]
    backends = run.placement()["backends"]
    return (lambda: run(m["inputs"])), y, "+".join(backends)


# what each encoder's output is, from its HF module (run.py's ENCODERS build these modules)
CALLS = {
    "clip": lambda m, px: m.model.multi_modal_projector(
        m.model.vision_tower(px, output_hidden_states=True).hidden_states[-2][:, 1:]),
    "whisper": lambda m, x: m(x).last_hidden_state,
    "siglip": lambda m, px: m(px).last_hidden_state,
}


def _torch(spec, work):
    import torch
    torch.set_num_threads(spec["threads"])
    # rebuilt from its class, config and weights: a pickled HF module loses its output hooks
    # (hidden_states come back None in transformers 5)
    saved = torch.load(os.path.join(work, f"torch_{spec['dtype']}.pt"), weights_only=False)
    model = saved["cls"](saved["config"]).to(getattr(torch, spec["dtype"]))
    model.load_state_dict(saved["state"])
    model.eval()
    x = torch.from_numpy(np.load(os.path.join(work, "x.npy")))[None].to(getattr(torch, spec["dtype"]))
    call = CALLS[spec["model"]]

    def run():
        with torch.inference_mode():
            return call(model, x)
    return run, run().float().numpy()[0], f"torch {torch.__version__}"


def _onnx(spec, work):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = spec["threads"]
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(work, "model.onnx"), so, providers=["CPUExecutionProvider"])
    x = np.load(os.path.join(work, "x.npy"))[None]
    name = sess.get_inputs()[0].name

    def run():
        return sess.run(None, {name: x})[0]
    return run, run()[0], f"onnxruntime {ort.__version__}"


def child(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    work = spec["work"]
    rss0 = _rss_mb()
    fn, y, what = {"graphdsl": _graphdsl, "torch": _torch, "onnx": _onnx}[spec["kind"]](spec, work)
    med = _timed(fn, spec["repeat"])
    np.save(spec["out"], np.asarray(y, np.float32))
    print(json.dumps({"s": med, "rss_mb": _rss_mb(), "rss_start_mb": rss0, "what": what}), flush=True)


# -- parent side ----------------------------------------------------------------------------------
def prepare(work: str, model: str, hf, gcfg, build, weights, inputs, x, wtypes, onnx: bool) -> list[str]:
    """Write every contender's files into `work`; returns notes (e.g. why ONNX is missing)."""
    import copy
    import dataclasses

    import torch
    from graphdsl.convert.writer import write_gguf

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, px):
            return CALLS[model](self.m, px)

    notes = []
    np.save(os.path.join(work, "x.npy"), x)
    for dtype in ("float32", "bfloat16"):
        m = copy.deepcopy(hf).to(getattr(torch, dtype))
        torch.save({"cls": type(hf), "config": hf.config, "state": m.state_dict()}, os.path.join(work, f"torch_{dtype}.pt"))
        del m
    if onnx:
        try:
            import onnxruntime  # noqa: F401 - only to say early that the row cannot run
            torch.onnx.export(Wrapped(hf).eval(), (torch.from_numpy(x)[None],), os.path.join(work, "model.onnx"),
                              dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
        except Exception as e:  # noqa: BLE001 - a missing peer is a note in the table, not a crash
            notes.append(f"ONNX Runtime row skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    cfgs = {}
    for wt in wtypes:
        cfgs[wt] = dataclasses.replace(gcfg, wtype=wt)
        g = build(cfgs[wt])
        write_gguf(os.path.join(work, f"{wt}.gguf"), "clip", [],
                   {n: (weights[n], node.dtype.name) for n, node in g.weights.items()})
    with open(os.path.join(work, "model.pkl"), "wb") as f:
        pickle.dump({"build": build, "cfgs": cfgs, "inputs": inputs}, f)
    return notes


def run_row(work: str, label: str, spec: dict, python: str = sys.executable, env: dict | None = None) -> dict:
    """Run one contender in a fresh process; its result dict, with its output array under "y"."""
    spec = {**spec, "work": work, "out": os.path.join(work, f"out_{abs(hash(label))}.npy")}
    path = os.path.join(work, f"spec_{abs(hash(label))}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    p = subprocess.run([python, os.path.join(HERE, "rows.py"), path], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=1800)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1][:200], "stderr": p.stderr}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["y"] = np.load(spec["out"])
    return res


if __name__ == "__main__":
    child(sys.argv[1])
