"""Benchmarks (not tests): figures written to docs/benchmarks.md."""
