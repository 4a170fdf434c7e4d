"""Benchmarks behind ``python main.py bench``: Kvant next to llama.cpp on the same machine, same input.

llama.cpp (from the optional llama-cpp-python package) is only used when it is importable; results
then carry both numbers and their ratio. These are measurements, never tests.
"""

from engine.bench.generate import GenerateBench, bench_generate
from engine.bench.quant import QuantBench, QuantBenchRow, bench_quant

__all__ = ["GenerateBench", "QuantBench", "QuantBenchRow", "bench_generate", "bench_quant"]
