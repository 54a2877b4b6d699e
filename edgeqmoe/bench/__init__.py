"""Benchmarks: what they measured, side by side in one run, with the machine."""
