"""Where the tests' files are, for helpers and tests in any folder under tests/ (and their children).

Test modules import small builders from one another by module name (``from test_models_qwen2vl
import _hf_features``), across the folders; ``on_path`` puts every folder on ``sys.path`` so that
works the same in pytest and in the child processes the suites start.
"""
import sys
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent  # these helpers
TESTS = SUPPORT.parent
ROOT = TESTS.parent
DATA = TESTS / "data"
FOLDERS = (SUPPORT, *(TESTS / d for d in ("unit", "ops", "models", "cli")))


def on_path() -> None:
    for p in reversed(FOLDERS):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
