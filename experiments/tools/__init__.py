"""The benchmark and validation tools: throughput and start-up benchmarks, the SB3 comparison, the simulator's
calibration and validation, the GPU check. Each is a command (``python -m experiments.tools.NAME``); none is
needed to train."""
