"""Benchmarks (not tests): see docs/performance.md."""
