"""Size parsing and formatting (bench.units)."""

from __future__ import annotations

import pytest

from bench.units import GiB, KiB, MiB, format_size, mb_per_s, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4KiB", 4 * KiB),
        ("64MiB", 64 * MiB),
        ("1GiB", GiB),
        ("64mib", 64 * MiB),
        ("64 MiB", 64 * MiB),
        ("2Mi", 2 * MiB),
        ("100", 100),
        ("100B", 100),
        ("4KB", 4000),
        ("1.5MB", 1_500_000),
        ("0.5KiB", 512),
        ("1k", 1000),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "-4KiB", "4XB", "1.3B", "4 KiB s", "1e3"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(("n", "text"), [(4096, "4KiB"), (64 * MiB, "64MiB"), (GiB, "1GiB"), (1000, "1000B")])
def test_format_size_round_trips(n: int, text: str) -> None:
    assert format_size(n) == text
    assert parse_size(format_size(n)) == n


def test_mb_is_decimal() -> None:
    assert mb_per_s(10_000_000, 2.0) == 5.0
    assert mb_per_s(1, 0.0) == 0.0
