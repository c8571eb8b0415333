"""Configuration loading: defaults, TOML, environment overrides and flags, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Config, load_config, with_overrides


def test_defaults_are_the_embedded_profile() -> None:
    c = load_config(None, env={})
    assert (c.server.host, c.server.port) == ("127.0.0.1", 9000)
    assert c.storage.data_dir == Path("strata-data")
    assert c.root.access_key is None


def test_toml_then_env_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[server]\nport = 9100\ndomains = ["s3.example.com"]\n[storage]\nzstd_level = 3\n')
    c = load_config(
        f,
        env={
            "STRATA_SERVER_PORT": "9200",
            "STRATA_ROOT_ACCESS_KEY": "AK",
            "STRATA_STORAGE_DATA_DIR": "/srv/d",
        },
    )
    assert c.server.port == 9200
    assert c.server.domains == ("s3.example.com",)
    assert c.storage.zstd_level == 3
    assert c.storage.data_dir == Path("/srv/d")
    assert c.root.access_key == "AK"
    c2 = with_overrides(c, server={"port": 9300, "host": None})
    assert c2.server.port == 9300 and c2.server.host == "127.0.0.1"


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[server]\nprot = 1\n")
    with pytest.raises(ValueError, match="prot"):
        load_config(f, env={})
    f.write_text("[nope]\nx = 1\n")
    with pytest.raises(ValueError, match="nope"):
        load_config(f, env={})


def test_bad_types_are_rejected() -> None:
    with pytest.raises(ValueError):
        load_config(None, env={"STRATA_SERVER_PORT": "ninety"})


def test_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "conf" / "strata.example.toml"
    assert load_config(example, env={}) == Config()
