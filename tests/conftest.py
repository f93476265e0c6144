import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "support"))  # shared test helpers (op_cases, hf_refs, target)

import paths

paths.on_path()  # test modules import builders from one another, across tests/{unit,ops,models,cli}

import target

from graphdsl.backends.rpc import spawn_rpc_server


def pytest_configure(config):
    # Before collection, so that test modules importing target.BACKEND see the endpoint.
    if target.BACKEND == "rpc":
        config._graphdsl_rpc_server, endpoint = spawn_rpc_server()
        target.BACKEND = os.environ["GRAPHDSL_TEST_BACKEND"] = f"rpc://{endpoint}"
    if os.environ.get("GRAPHDSL_TEST_CORE") == "1":
        _forbid_children()


# -- the fast core: tests by what they need ------------------------------------------------------------
# tests/unit (NumPy and the graph), tests/ops (the extension), tests/models (HF references) and tests/cli
# (the command line, run as a user runs it: child processes). A test that starts a child process is
# marked `children` (every test under tests/cli is); `make test-core` runs the rest with
# GRAPHDSL_TEST_CORE=1, where starting a child raises, so an unmarked one fails instead of slipping in.
def pytest_collection_modifyitems(config, items):
    cli = os.path.join(os.path.dirname(__file__), "cli") + os.sep
    for item in items:
        if str(item.fspath).startswith(cli):
            item.add_marker("children")


def _forbid_children():
    import multiprocessing.process
    import subprocess

    def refuse(*_a, **_k):
        raise RuntimeError("this test starts a child process: mark it @pytest.mark.children "
                           "(GRAPHDSL_TEST_CORE=1 runs the core without children)")

    subprocess.Popen.__init__ = refuse
    multiprocessing.process.BaseProcess.start = refuse
    os.fork = os.posix_spawn = refuse
