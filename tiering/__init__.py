"""Tiering: lifecycle rules and hot/warm/cold transitions (not built yet; see the issues)."""
