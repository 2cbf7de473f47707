"""``lasa eval``: benchmarks, generation with and without steering, judges, the report."""
