"""The fault-injection suite, a package so its conftest does not shadow tests/conftest.py (both would be
the top-level module ``conftest`` when nox together collects them in one run)."""
