"""Attack suite: hostile cells against a real, isolated sandbox (see conftest.py)."""
