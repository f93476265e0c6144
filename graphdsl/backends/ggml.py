"""Running graphs on ggml's backend scheduler.

The idiom of ggml's examples/simple/simple-backend.cpp: devices ordered accelerators first and
CPU last -> one ggml_backend_sched -> for each set of input shapes, a graph built in a no_alloc
context and reserved once -> per run: alloc, set inputs, compute (GIL released), read outputs.
Weights live in one backend buffer, uploaded once and referenced by every program. Constants
(`const` nodes) live in a buffer of their program, uploaded once when the program is built for
its input shapes: the scheduler's compute buffers are shared by all programs, so values left
there would be overwritten by the next program's run.
"""
from __future__ import annotations

import atexit
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from graphdsl import _ggml
from graphdsl import dtypes as dt
from graphdsl.ops.registry import REGISTRY

from .devices import MAX_THREADS, DevicePlan, check_threads, devices, plan_devices, resolve_devices  # noqa: F401
from .ggml_lower import BACKEND, Lowering, emit, ids_check, ne_of, packed
from .weights import check_inputs, check_weights, const_value


# Runtimes and buffers that hold memory on an RPC server. At exit they are forgotten rather than
# freed: the server may already be gone (ggml's client aborts the process when a free cannot reach
# it), and a live server frees a client's buffers itself when the connection closes.
_RPC_HANDLES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _abandon_rpc_at_exit() -> None:
    for handle in list(_RPC_HANDLES):
        handle.abandon()


# First guesses for the lowering's context and the scheduler; both grow when a graph needs more.
TENSORS_PER_NODE, CONTEXT_SLACK = 8, 64  # most ops lower to a few ggml tensors; concat of n to n - 1
SCHED_MIN_SIZE = 8192
MAX_PROGRAMS = 32  # programs (input-shape sets) an executor keeps; the least recently used goes first
# ggml ops that compute nothing (leaves and views): the scheduler puts them next to their inputs
GGML_VIEWS = ("NONE", "VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE")


@dataclass
class Program:
    """One lowered graph for one set of input shapes, reserved once on the scheduler."""

    graph: object
    ctx: object
    cgraph: object
    inputs: dict[str, object]
    outputs: dict[str, object]  # output/capture name -> ggml tensor (contiguous)
    tensors: dict[str, object] = field(default_factory=dict)  # node name -> ggml tensor (metadata; data
    # is readable through the runtime only while this program is the one allocated)
    id_checks: list = field(default_factory=list)  # (input name, n_rows) for get_rows ids
    checked: bool = False  # strict placement verified
    gctx: object = None  # the context holding cgraph
    consts: dict[str, object] = field(default_factory=dict)  # const node name -> tensor in const_buffer
    const_ctx: object = None  # the context holding consts
    const_buffer: object = None  # their memory on the primary device, filled once (_upload_consts)


class GGMLExecutor:
    """A Graph compiled for ggml. Call it with NumPy inputs to get NumPy outputs (dict by name).

    Args:
        graph: the Graph to run.
        backend: "cpu", "auto", a backend family ("cuda", "metal", "blas") or a device name.
        n_threads: CPU threads, 1..min(512, 4 x cores) (default: all cores).
        precision: "f32" (exact f32 forms of conv, GELU and attention) or "fast" (ggml's f16 paths).
            With f16/bf16/quantized weights, "f32" products see the activations rounded to the
            weight's dot type (f16, bf16, q8_0, q8_K), as ggml's CPU mul_mat does; see the README.
        weights: optional weights to bind now (see load_weights).
        strict: raise instead of letting the scheduler move nodes to a fallback backend.
        max_programs: how many lowered programs (one per set of input shapes and capture list) to
            keep; past it the least recently used one is freed (its ggml contexts and constants)
            and lowered again if its shapes come back. Each costs host memory in proportion to
            the graph's size.

    One executor holds one scheduler and one set of compute buffers, so calls are serialised by
    `self.lock` (a re-entrant lock): threads may share an executor, and run one at a time. On the
    main thread, Ctrl-C stops a CPU compute at its next node and raises KeyboardInterrupt.
    """

    def __init__(self, graph, backend: str = "cpu", *, n_threads: int | None = None,
                 precision: str = "f32", weights: Mapping[str, object] | None = None, strict: bool = False,
                 max_programs: int = MAX_PROGRAMS):
        missing = sorted({n.op for n in graph.nodes if n.op in REGISTRY and BACKEND not in REGISTRY[n.op].lowerings})
        if missing:
            raise ValueError(f"ggml backend: no lowering for ops {missing}")
        Lowering(None, precision)  # validates the policy name
        if isinstance(max_programs, bool) or not isinstance(max_programs, (int, np.integer)) or max_programs < 1:
            raise ValueError(f"max_programs must be an integer >= 1, got {max_programs!r}")
        self.max_programs = int(max_programs)
        self.graph = graph
        self.precision = precision
        self.strict = strict
        self.plan: DevicePlan = plan_devices(backend)
        self.n_threads = check_threads(n_threads)
        self.lock = threading.RLock()
        self.runtime = _ggml.Runtime(list(self.plan.devices), self.n_threads, SCHED_MIN_SIZE)
        if self.plan.cpu_partner:
            # ops alternate between the partner and the CPU, one split each: keep ggml's CPU
            # workers alive between splits instead of starting them for every one
            self.runtime.set_threadpool(True)
        # On a device with its own memory (CUDA, RPC), inputs go straight there, so that ops which
        # read no weight (a whole graph of them, in the op tests) run on it too and not next to a
        # CPU-resident input; the upload costs the same one copy either way.
        self._pin_inputs = not self.runtime.has_host_memory(0)
        if self.plan.remote:
            _RPC_HANDLES.add(self.runtime)
        self._programs: OrderedDict[tuple, Program] = OrderedDict()  # least recently used first
        self._wctx = None
        self._wtensors: dict[str, object] = {}
        self._wbuffer = None
        self._mapped: dict[str, int] = {}  # weights used in place: name -> address
        self._host_buffers: list = []
        self.last_program: Program | None = None
        self._allocated: Program | None = None  # the program the scheduler holds allocated now
        if weights is not None:
            self.load_weights(weights)

    backend = property(lambda self: self.plan.name)
    device_names = property(lambda self: list(self.plan.devices))

    # -- weights -----------------------------------------------------------------------------------
    def load_weights(self, weights: Mapping[str, object], *, allow_extra: bool = False) -> None:
        """Bind weights by name (strict: missing, extra and mis-shaped ones are listed together).

        The first call allocates one buffer on the primary device; later calls overwrite the
        values in place, so compiled programs stay valid. On the CPU, arrays that are views into
        a memory map (GGUF files) with 32-byte alignment are used in place, not copied.
        """
        stored = check_weights(self.graph, weights, allow_extra=allow_extra)
        with self.lock:
            self._bind(stored)

    def _bind(self, stored: dict[str, np.ndarray]) -> None:
        if self._wctx is None and self.graph.weights:
            self._wctx = _ggml.Context(len(self.graph.weights) + 1)
            for name, node in self.graph.weights.items():
                self._wtensors[name] = self._wctx.new_tensor(node.dtype.ggml_type, ne_of(node.shape), name)
            if self.plan.on_host:
                self._map_in_place(stored)
            if len(self._mapped) < len(self.graph.weights):
                self._wbuffer = self.runtime.alloc_tensors(self._wctx, 0)
                if self.plan.remote:
                    _RPC_HANDLES.add(self._wbuffer)
        for name, arr in stored.items():
            if name in self._mapped:
                if arr.ctypes.data != self._mapped[name]:
                    raise ValueError(f"weight '{name}' is used in place from a memory map; it cannot be "
                                     f"overwritten (compile a new executor instead)")
                continue
            self.runtime.set_tensor(self._wtensors[name], arr)

    def _map_in_place(self, stored: dict[str, np.ndarray]) -> None:
        """Place weights that live in one 32-byte-aligned mmap directly in a CPU host buffer."""
        import mmap
        by_root: dict[int, tuple[object, list]] = {}
        for name, arr in stored.items():
            root = arr
            while isinstance(root, np.ndarray) and root.base is not None:
                root = root.base
            if not isinstance(root, mmap.mmap) or not arr.flags.c_contiguous or arr.ctypes.data % 32:
                continue
            by_root.setdefault(id(root), (root, []))[1].append((name, arr))
        for root, items in by_root.values():
            whole = np.frombuffer(root, dtype=np.uint8)
            base = whole.ctypes.data
            if base % 32:
                continue
            buf = self.runtime.host_buffer(whole)
            for name, arr in items:
                self.runtime.place(buf, self._wtensors[name], arr.ctypes.data - base)
                self._mapped[name] = arr.ctypes.data
            self._host_buffers.append(buf)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights bound: allocated on the primary device plus used in place from mmaps."""
        own = self._wbuffer.size if self._wbuffer is not None else 0
        return own + sum(self.graph.weights[n].nbytes for n in self._mapped)

    # -- lowering --------------------------------------------------------------------------------------
    def _program(self, shapes: dict[str, tuple], capture: Sequence[str]) -> Program:
        key = (tuple(sorted(shapes.items())), tuple(capture))
        prog = self._programs.get(key)
        if prog is not None:
            self._programs.move_to_end(key)
            return prog
        graph = self.graph
        if any(graph.inputs[k].shape != s for k, s in shapes.items()):
            graph = graph.specialize(shapes)
        wanted = graph.match(capture)
        live = graph.live_nodes(list(graph.outputs.values()) + wanted, values_only=True)
        n_tensors = TENSORS_PER_NODE * len(live) + CONTEXT_SLACK
        while True:
            try:
                prog = self._lower(graph, live, wanted, n_tensors)
                break
            except _ggml.ContextFull:
                n_tensors *= 4
        self._upload_consts(prog)
        # ggml asserts when a graph outgrows its node array or the scheduler's hash set: both are
        # sized from the tensors the lowering made (every node and leaf is one of them, a weight
        # or a constant).
        n = prog.ctx.n_tensors + len(self._wtensors) + len(prog.consts) + 1
        gctx = _ggml.Context(0, n)
        cgraph = gctx.new_graph(n, prog.ctx)
        for t in prog.outputs.values():
            cgraph.expand(t)
        prog.cgraph, prog.gctx = cgraph, gctx
        self.runtime.ensure_capacity(2 * n + 64)
        self.runtime.reserve(cgraph)
        self._allocated = None  # reserving dropped the previous allocation
        self._programs[key] = prog
        while len(self._programs) > self.max_programs:
            self._evict(self._programs.popitem(last=False)[1])
        return prog

    def _evict(self, prog: Program) -> None:
        """Forget a program: its contexts go with the last reference, its constants' buffer here."""
        if self._allocated is prog:
            self.runtime.reset()
            self._allocated = None
        if self.last_program is prog:
            self.last_program = None
        if prog.const_buffer is not None:
            self.runtime.release(prog.const_buffer)  # the runtime keeps every buffer it allocates

    def _lower(self, graph, live, wanted, n_tensors: int) -> Program:
        ctx = _ggml.Context(n_tensors)
        L = Lowering(ctx, self.precision, fused_f32_attention=self.plan.on_host)
        # Constants get their own context: it is allocated in a buffer of its own, not by the scheduler.
        Lc = Lowering(_ggml.Context(sum(n.op == "const" for n in live) + 1), self.precision)
        vals: dict[int, object] = {}
        inputs, tensors, id_checks, consts = {}, {}, [], {}
        for node in live:
            if node.op == "input":
                t = ctx.new_tensor(node.dtype.ggml_type, ne_of(node.shape), node.name)
                t.set_input()
                inputs[node.name] = t
            elif node.op == "weight":
                t = self._wtensors[node.name]
            elif node.op == "const":  # a leaf in its own context, uploaded once (_upload_consts)
                t = consts[node.name] = emit(Lc, node, vals)
            else:
                if node.op == "get_rows":
                    id_checks.append(ids_check(node))
                t = emit(L, node, vals)
            vals[id(node)] = t
            tensors[node.name] = t
        outputs = {}
        for name, node in [*graph.outputs.items(), *((n.name, n) for n in wanted)]:
            t = vals[id(node)]
            if not packed(t) or node.op in ("input", "weight", "const"):
                t = _ggml.ops.cont(ctx, t)
            t.set_output()
            outputs[name] = t
        return Program(graph, ctx, None, inputs, outputs, tensors, [c for c in id_checks if c],
                       consts=consts, const_ctx=Lc.ctx)

    def _upload_consts(self, prog: Program) -> None:
        """Allocate the program's constants on the primary device and copy their values in, once."""
        if not prog.consts:
            return
        prog.const_buffer = self.runtime.alloc_tensors(prog.const_ctx, 0)
        if self.plan.remote:
            _RPC_HANDLES.add(prog.const_buffer)
        nodes = {n.name: n for n in prog.graph.nodes if n.op == "const"}
        for name, t in prog.consts.items():
            self.runtime.set_tensor(t, const_value(nodes[name]))

    def prepare(self, inputs: Mapping[str, object], *, capture: Sequence[str] = ()) -> Program:
        """Lower and reserve for these inputs' shapes without computing (a warm-up)."""
        arrays = check_inputs(self.graph, inputs)
        with self.lock:
            return self._program({k: v.shape for k, v in arrays.items()}, tuple(capture))

    # -- running -----------------------------------------------------------------------------------------
    def __call__(self, inputs: Mapping[str, object] | None = None, *, capture: Sequence[str] = (),
                 **kw) -> dict[str, np.ndarray]:
        """Run with NumPy inputs (by name); returns outputs, plus captured nodes matching `capture` globs."""
        arrays = check_inputs(self.graph, dict(inputs or {}, **kw))
        if self.graph.weights and self._wctx is None:
            raise ValueError(f"graph '{self.graph.name}' has unbound weights: call load_weights() first")
        with self.lock:
            return self._run(arrays, tuple(capture))

    def _run(self, arrays, capture) -> dict[str, np.ndarray]:
        prog = self._program({k: v.shape for k, v in arrays.items()}, capture)
        for name, n_rows in prog.id_checks:
            ids = arrays[name]
            if ids.size and (ids.min() < 0 or ids.max() >= n_rows):
                raise ValueError(f"[get_rows] input '{name}': ids must lie in [0, {n_rows}), "
                                 f"got [{ids.min()}, {ids.max()}]")
        if self._allocated is not prog:
            # Re-running the allocated program skips the split, as llama.cpp's graph reuse does;
            # an RPC server then recomputes its stored graph instead of receiving it again.
            pinned = [(t, 0) for t in prog.inputs.values()] if self._pin_inputs else []
            self.runtime.alloc_graph(prog.cgraph, pinned)
            self._allocated = prog
        if self.strict and not prog.checked:
            home = {self.runtime.backend_names[i] for i in self.plan.home}
            moved = {n: b for n, (b, _) in self._placement(prog).items() if b not in home}
            if moved:
                raise ValueError(f"strict placement: {len(moved)} nodes would leave {self.runtime.backend_names[0]}: "
                                 + ", ".join(f"{n} -> {b}" for n, b in list(moved.items())[:10]))
            prog.checked = True
        try:
            for name, t in prog.inputs.items():
                self.runtime.set_tensor(t, arrays[name])
            done = self.runtime.compute(prog.cgraph, threading.current_thread() is threading.main_thread())
            if not done:  # an eval callback stopped the graph: its outputs are unfinished
                raise RuntimeError(f"the compute of graph '{self.graph.name}' was stopped before its end "
                                   f"(by an eval callback); no outputs")
        except BaseException:
            self._allocated = None  # allocate afresh next time (after Ctrl-C, say)
            raise
        self.last_program = prog
        return {name: self._read(prog, name, t) for name, t in prog.outputs.items()}

    def _read(self, prog, name, t):
        node = prog.graph.outputs.get(name) or next(n for n in prog.graph.nodes if n.name == name)
        out = np.empty(node.shape, dtype=np.uint16 if node.dtype is dt.bf16 else node.dtype.numpy)
        self.runtime.get_tensor(t, out)
        return dt.bf16_to_f32(out) if node.dtype is dt.bf16 else out

    @property
    def n_reserve(self) -> int:
        """Scheduler reservations so far: one per distinct set of input shapes (and capture list)."""
        return self.runtime.n_reserve

    def placement(self) -> dict:
        """Where the last run's nodes ran: backend per node, split and copy counts, buffer sizes."""
        with self.lock:
            return self._placement_report()

    def _placement_report(self) -> dict:
        prog = self.last_program
        if prog is None:
            raise ValueError("placement() needs a run first")
        names = self.runtime.backend_names
        where = self._placement(prog)
        return {
            "backends": names,
            "nodes": {n: b for n, (b, _) in where.items()},
            "fallbacks": {n: why for n, (b, why) in where.items() if why},
            "n_splits": self.runtime.n_splits,
            "n_copies": self.runtime.n_copies,
            "compute_buffer_bytes": {n: self.runtime.buffer_size(i) for i, n in enumerate(names)},
            "weight_bytes": {**({self._wbuffer.name: self._wbuffer.size} if self._wbuffer else {}),
                             **({"CPU (mmap, in place)": self.weight_bytes - (self._wbuffer.size if self._wbuffer else 0)}
                                if self._mapped else {})},
            "ggml_nodes": prog.cgraph.n_nodes,
        }


    def _placement(self, prog) -> dict[str, tuple[str, str]]:
        """node -> (backend, why it is not on the primary device or "")."""
        names = self.runtime.backend_names
        out = {}
        for name, t in prog.tensors.items():
            i = self.runtime.tensor_backend(t)
            if i < 0:
                continue
            why = ""
            if i not in self.plan.home and t.op not in GGML_VIEWS:
                why = (f"{t.op} unsupported by {names[0]}" if not self.runtime.supports_op(0, t)
                       else "scheduler placed it next to its inputs")
            out[name] = (names[i], why)
        return out
