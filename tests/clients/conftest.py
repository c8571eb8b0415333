"""Fixtures for the client matrix: a fresh test tree per test (see ``support.trees``)."""

from __future__ import annotations

from pathlib import Path

import pytest

# Plain asserts in these helper modules should explain themselves like those in tests do.
pytest.register_assert_rewrite("clients.awscli_cases", "support.trees")

from support.trees import Tree, make_tree  # noqa: E402


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """Small files, nested and oddly named, plus one multi-MiB file, under ``tmp_path/src``."""
    return make_tree(tmp_path / "src", seed=7)


@pytest.fixture
def small_tree(tmp_path: Path) -> Tree:
    """The same small files without the multi-MiB one, under ``tmp_path/small``."""
    return make_tree(tmp_path / "small", seed=8, big=False)
