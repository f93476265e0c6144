"""Executors over the graph IR (installed as graphdsl.backends).

- reference: the NumPy interpreter whose semantics every other backend is checked against.
- ggml: lowering to the graphdsl._ggml extension and ggml's backend scheduler.
"""
