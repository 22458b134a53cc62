"""`python -m inferq.bench`: the benchmark harness (results in BENCHMARKS.md)."""
