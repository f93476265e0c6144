"""Inspection: printing, summaries, networkx, drawing, profiling, capture and diff."""
