"""Benchmarks: each script measures a figure beside its baseline in the same run (see docs/benchmarks.md)."""
