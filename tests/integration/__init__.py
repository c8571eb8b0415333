"""Integration tests: drive a real Strata server process over real HTTP."""
