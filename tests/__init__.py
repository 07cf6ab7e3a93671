"""Test package: lets test files share ``tests.reference`` under ``pytest`` and ``python -m pytest``."""
