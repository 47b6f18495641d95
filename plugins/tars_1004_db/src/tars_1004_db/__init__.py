"""TARS-1004: composite indexes built CONCURRENTLY, invalid-index repair and keyset pagination."""
