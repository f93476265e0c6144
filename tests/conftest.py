import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # shared test helpers (op_cases, hf_refs)
