"""The backend the ggml tests run on, from GRAPHDSL_TEST_BACKEND: "cpu" (default), "blas", "cuda",
a device name, "rpc://host:port", or "rpc" (conftest starts a local server and rewrites it to
rpc://127.0.0.1:N). The reference is always the NumPy interpreter."""
import os
import socket
import subprocess
import sys
import tempfile
import time

BACKEND = os.environ.get("GRAPHDSL_TEST_BACKEND", "cpu")


def start_rpc_server(host: str = "127.0.0.1", timeout: float = 10.0, extra: tuple[str, ...] = ()
                     ) -> tuple[subprocess.Popen, str]:
    """ggml's RPC server in a child process on a free loopback port; returns (process, "host:port").

    The child gets SIGTERM when this process dies (PR_SET_PDEATHSIG), so executors that are
    released at interpreter exit still find their server: ggml's RPC client aborts the process when
    a server it holds buffers on has gone away.
    """
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]

    def die_with_parent():
        import ctypes
        import signal
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    log = tempfile.TemporaryFile()
    # cwd outside the checkout: `-m graphdsl` must import the installed package, not the source tree
    proc = subprocess.Popen([sys.executable, "-m", "graphdsl.cli", "rpc-server", "--host", host, "--port", str(port), *extra],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir(),
                            preexec_fn=die_with_parent)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"graphdsl rpc-server exited with {proc.returncode}: {log.read()[-2000:].decode()}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return proc, f"{host}:{port}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"graphdsl rpc-server did not listen on {host}:{port} within {timeout} s")
