"""Benchmarks (``python -m mil.bench``): extraction, store and fit throughput, one module each."""

__all__: list[str] = []
