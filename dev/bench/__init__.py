"""Benchmarks are commands, not tests: each one starts what it measures, runs for a while and
prints numbers to compare, so they stay out of `pytest` and the CI time budget.

Run one with `python -m dev.bench.<name> --help`.
"""
