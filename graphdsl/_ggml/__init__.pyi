"""
Thin bindings over ggml: contexts, tensors, op builders, the backend scheduler.
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
import typing_extensions
from . import ops
__all__: list[str] = ['BackendBuffer', 'Context', 'ContextFull', 'Graph', 'Runtime', 'Tensor', 'devices', 'ggml_version', 'has_backend', 'load_backend', 'ops', 'quantize', 'row_size', 'rpc_add_server', 'rpc_start_server', 'set_log_level', 'type_name']
class ContextFull(MemoryError):
    pass
class Context:
    """
    A no_alloc ggml context with room for n_tensors tensor headers and one graph.
    """
    def __init__(self, n_tensors: typing.SupportsInt | typing.SupportsIndex, graph_size: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        ...
    def new_graph(self, size: typing.SupportsInt | typing.SupportsIndex, tensors: Context = None) -> Graph:
        """
        The context's one graph, of up to `size` nodes and as many leafs, over the tensors of context `tensors` (default: this one).
        """
    def new_tensor(self, type: typing.SupportsInt | typing.SupportsIndex, ne: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], name: str = '') -> Tensor:
        ...
    @property
    def n_tensors(self) -> int:
        """
        Tensors created in this context so far.
        """
    @property
    def used_mem(self) -> int:
        ...
class Tensor:
    """
    A handle to a ggml tensor; shapes are in ggml ne order.
    """
    name: str
    def __repr__(self) -> str:
        ...
    def set_input(self) -> None:
        ...
    def set_output(self) -> None:
        ...
    @property
    def has_data(self) -> bool:
        ...
    @property
    def is_contiguous(self) -> bool:
        ...
    @property
    def is_transposed(self) -> bool:
        ...
    @property
    def nb(self) -> tuple:
        ...
    @property
    def nbytes(self) -> int:
        ...
    @property
    def ne(self) -> tuple:
        ...
    @property
    def op(self) -> str:
        ...
    @property
    def op_params(self) -> list[int]:
        """
        the op's parameters as int32 (mul_mat: [0] is the precision, 10 = GGML_PREC_F32)
        """
    @property
    def type(self) -> int:
        ...
class Graph:
    """
    A ggml compute graph (ggml_cgraph).
    """
    def expand(self, tensor: Tensor) -> None:
        """
        ggml_build_forward_expand: add t and everything it depends on.
        """
    def node(self, i: typing.SupportsInt | typing.SupportsIndex) -> Tensor:
        """
        The i-th node in execution order (negative counts from the end).
        """
    @property
    def n_nodes(self) -> int:
        ...
class BackendBuffer:
    """
    A ggml backend buffer (ggml_backend_buffer_t).
    """
    def abandon(self) -> None:
        """
        Forget the buffer without freeing it (its RPC server frees it when the connection closes).
        """
    @property
    def is_host(self) -> bool:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def size(self) -> int:
        ...
class Runtime:
    """
    Backends (accelerators first, CPU last) and the ggml_backend_sched over them.
    """
    def __init__(self, devices: collections.abc.Sequence[str], n_threads: typing.SupportsInt | typing.SupportsIndex = 0, graph_size: typing.SupportsInt | typing.SupportsIndex = 8192) -> None:
        ...
    def abandon(self) -> None:
        """
        Forget the scheduler and backends without freeing them (at exit, for RPC).
        """
    def alloc_graph(self, graph: Graph, pinned: collections.abc.Sequence[tuple[Tensor, typing.SupportsInt | typing.SupportsIndex]] = []) -> None:
        """
        Allocate a graph for one run; `pinned` assigns tensors (e.g. inputs) to backends first.
        """
    def alloc_tensors(self, ctx: Context, backend: typing.SupportsInt | typing.SupportsIndex) -> BackendBuffer:
        """
        Allocate every tensor of ctx in one buffer of backend i.
        """
    def buffer_size(self, backend: typing.SupportsInt | typing.SupportsIndex) -> int:
        """
        Compute-buffer bytes the scheduler reserved on backend i.
        """
    def compute(self, graph: Graph, interruptible: bool = False) -> bool:
        """
        Run the graph with the GIL released. Returns False if the eval callback stopped it. With interruptible (main thread only), SIGINT stops the CPU backend at its next node (oneDNN at its next product) and the Python handler runs (KeyboardInterrupt).
        """
    def ensure_capacity(self, n: typing.SupportsInt | typing.SupportsIndex) -> None:
        """
        Make the scheduler hold graphs of n tensors (a new scheduler if it is smaller).
        """
    def get_tensor(self, tensor: Tensor, out: typing_extensions.Buffer) -> None:
        """
        Copy a tensor's bytes into a writable host array.
        """
    def has_host_memory(self, backend: typing.SupportsInt | typing.SupportsIndex) -> bool:
        """
        Whether backend i computes in host memory (CPU, BLAS) rather than its own (CUDA, RPC).
        """
    def host_buffer(self, memory: typing_extensions.Buffer) -> BackendBuffer:
        """
        Wrap host memory (e.g. an mmap) as a CPU buffer without copying; the memory is kept alive.
        """
    def place(self, buffer: BackendBuffer, tensor: Tensor, offset: typing.SupportsInt | typing.SupportsIndex) -> None:
        """
        Place tensor t at offset bytes inside buffer b (zero copy).
        """
    def release(self, buffer: BackendBuffer) -> None:
        """
        Free a buffer that alloc_tensors made (a program's constants) and forget it.
        """
    def reserve(self, graph: Graph) -> None:
        """
        Size the compute buffers for this graph (once per set of input shapes).
        """
    def reset(self) -> None:
        ...
    def set_eval_callback(self, callback: collections.abc.Callable[[Tensor, bool], bool] | None) -> None:
        """
        cb(tensor, ask) -> bool, ggml_backend_sched_eval_callback semantics; None removes it.
        """
    def set_tensor(self, tensor: Tensor, data: typing_extensions.Buffer) -> None:
        """
        Copy host bytes into a tensor (any backend).
        """
    def set_tensor_backend(self, tensor: Tensor, backend: typing.SupportsInt | typing.SupportsIndex) -> None:
        """
        Assign a tensor to backend i before the graph is allocated.
        """
    def set_threadpool(self, on: bool) -> None:
        """
        Run each compute on a CPU threadpool that outlives it (shared by the process's runtimes, one per compute running at once) instead of starting threads for every CPU split.
        """
    def supports_op(self, backend: typing.SupportsInt | typing.SupportsIndex, tensor: Tensor) -> bool:
        """
        Whether backend i can run the op that produces tensor.
        """
    def synchronize(self) -> None:
        ...
    def tensor_backend(self, tensor: Tensor) -> int:
        """
        Index of the backend a node was assigned to, or -1.
        """
    def wait_for(self, tensor: Tensor) -> None:
        """
        Block until tensor t has been computed (one round trip on RPC).
        """
    @property
    def backend_names(self) -> list[str]:
        ...
    @property
    def graph_size(self) -> int:
        """
        The scheduler's capacity in tensors.
        """
    @property
    def n_copies(self) -> int:
        ...
    @property
    def n_reserve(self) -> int:
        """
        How many times reserve() has run.
        """
    @property
    def n_splits(self) -> int:
        ...
def devices() -> list:
    """
    Devices that ggml's backend registry reports, in registry order.
    """
def ggml_version() -> str:
    ...
def has_backend(name: str) -> bool:
    """
    Whether this libggml registers a backend ("CPU", "BLAS", "RPC", "CUDA", "Metal").
    """
def load_backend(path: str) -> bool:
    """
    Load a ggml backend library (ggml_backend_load) into the registry; False if it cannot load.
    """
def quantize(type: typing.SupportsInt | typing.SupportsIndex, src: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], dst: typing.Annotated[numpy.typing.ArrayLike, numpy.uint8]) -> None:
    """
    Quantize rows of a float32 matrix into dst with ggml's own reference quantizer.
    """
def row_size(type: typing.SupportsInt | typing.SupportsIndex, ne0: typing.SupportsInt | typing.SupportsIndex) -> int:
    """
    Bytes of one row of ne0 elements of a ggml type.
    """
def rpc_add_server(endpoint: str) -> list[str]:
    """
    Register ggml's RPC server at host:port; returns its device names.
    """
def rpc_start_server(endpoint: str, n_threads: typing.SupportsInt | typing.SupportsIndex, device: str = '', cache_dir: str = '') -> None:
    """
    Serve a local device over ggml's RPC protocol (blocks); cache_dir keeps large tensors by hash.
    """
def set_log_level(level: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    Minimum ggml log level printed to stderr (1 debug, 2 info, 3 warn, 4 error).
    """
def type_name(type: typing.SupportsInt | typing.SupportsIndex) -> str:
    """
    The name of a ggml type ("f32", "q8_0").
    """
