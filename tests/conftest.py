import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # shared test helpers (op_cases, hf_refs, target)

import target

from graphdsl.backends.rpc import spawn_rpc_server


def pytest_configure(config):
    # Before collection, so that test modules importing target.BACKEND see the endpoint.
    if target.BACKEND == "rpc":
        config._graphdsl_rpc_server, endpoint = spawn_rpc_server()
        target.BACKEND = os.environ["GRAPHDSL_TEST_BACKEND"] = f"rpc://{endpoint}"
