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


def test_production_profile_env_names() -> None:
    """The operator-facing names from the deployment docs map onto the typed config."""
    c = load_config(
        None,
        env={
            "STRATA_META_DSNS": "postgresql://a/x, postgresql://b/x",
            "STRATA_REDIS_URL": "redis://127.0.0.1:6379/0",
            "STRATA_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
            "STRATA_KAFKA_TOPIC": "events",
            "STRATA_BACKEND_ENDPOINT": "http://s3:8333",
            "STRATA_BACKEND_BUCKET": "hot",
            "STRATA_BACKEND_ACCESS_KEY": "AK",
            "STRATA_BACKEND_SECRET_KEY": "SK",
            "STRATA_BACKEND_REGION": "eu-west-1",
            "STRATA_KMS": "arn:aws:kms:eu-west-1:111122223333:key/abc",
            "STRATA_GC_GRACE_SECONDS": "60",
        },
    )
    assert c.meta.dsns == ("postgresql://a/x", "postgresql://b/x")
    assert c.redis.url == "redis://127.0.0.1:6379/0"
    assert (c.kafka.bootstrap, c.kafka.topic) == ("127.0.0.1:9092", "events")
    assert (c.backend.endpoint, c.backend.bucket, c.backend.region) == ("http://s3:8333", "hot", "eu-west-1")
    assert (c.backend.access_key, c.backend.secret_key) == ("AK", "SK")
    assert c.kms.key.startswith("arn:aws:kms:")
    assert c.gc.grace_seconds == 60.0
    assert load_config(None, env={}).kafka.topic == "strata-events"


def test_secrets_stay_out_of_repr() -> None:
    c = load_config(
        None,
        env={
            "STRATA_BACKEND_SECRET_KEY": "TOPSECRET",
            "STRATA_META_DSNS": "postgresql://u:PGPASS@h/db",
            "STRATA_REDIS_URL": "redis://:REDISPASS@h",
        },
    )
    text = repr(c)
    for secret in ("TOPSECRET", "PGPASS", "REDISPASS"):
        assert secret not in text
