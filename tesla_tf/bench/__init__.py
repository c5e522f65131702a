"""Benchmarks as library code with dataclass configs; tools/benchmark*.py only parse flags."""
