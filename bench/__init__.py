"""Benchmarks: load generator, codec ceiling and dedup corpus (not built yet; see the issues)."""
