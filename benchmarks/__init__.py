"""Benchmarks for flax_local: ``python -m benchmarks.run`` (see ``benchmarks/run.py``)."""
