"""Benchmarks of Pavana's components: each prints a table and writes JSON."""
