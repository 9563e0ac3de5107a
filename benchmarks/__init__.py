"""Benchmarks (not run in CI): `python -m benchmarks.sst2`, `python -m benchmarks.serving`."""
