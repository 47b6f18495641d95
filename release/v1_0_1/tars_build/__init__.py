"""Helpers of ``release/v1_0_1/build_v1_0_1_package.py``: provenance, SBOMs, release notes, plugin metadata.

Kept out of ``tars_core`` on purpose: they are build tooling (cryptography, CycloneDX), never imported by
``tars-run``. The tests in ``tests/release`` import them with this folder on ``sys.path``.
"""
