"""The backend the ggml tests run on, from GRAPHDSL_TEST_BACKEND: "cpu" (default), "blas", "cuda",
a device name, "rpc://host:port", or "rpc" (conftest starts a local server with
graphdsl.backends.rpc.spawn_rpc_server and rewrites it to rpc://127.0.0.1:N). The reference is
always the NumPy interpreter."""
import os

BACKEND = os.environ.get("GRAPHDSL_TEST_BACKEND", "cpu")
