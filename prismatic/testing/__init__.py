"""Helpers for tests, benchmarks and the demo: the golden weight rule and tiny presets."""
