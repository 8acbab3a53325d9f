"""Entry points: configuration, training runs and their records, benchmarks."""
