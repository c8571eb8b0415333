"""The production profile's files in conf/: the example config loads, and every STRATA_*
variable the compose file sets is a real config key (a typo would silently do nothing)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from gateway.config import Config, load_config

CONF = Path(__file__).resolve().parents[2] / "conf"


def _env_names() -> set[str]:
    names = {"STRATA_KMS"}
    defaults = Config()
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(defaults, section.name)):
            names.add(f"STRATA_{section.name}_{f.name}".upper())
    return names


def test_production_example_loads_and_uses_the_services() -> None:
    c = load_config(CONF / "strata.production.toml", env={})
    assert c.redis.url and c.kafka.bootstrap and c.backend.endpoint and c.backend.bucket
    assert c.log.format == "json" and c.gc.interval_seconds > 0


def test_compose_sets_only_known_config_keys() -> None:
    text = (CONF / "compose" / "docker-compose.yml").read_text()
    used = set(re.findall(r"\b(STRATA_[A-Z_]+):", text))
    required = {"STRATA_META_DSNS", "STRATA_REDIS_URL", "STRATA_KAFKA_BOOTSTRAP", "STRATA_BACKEND_ENDPOINT"}
    assert required <= used
    assert used <= _env_names(), used - _env_names()
    env = dict(re.findall(r"\b(STRATA_[A-Z_]+): \"([^\"]*)\"", text))
    c = load_config(None, env=env)
    assert len(c.meta.dsns) == 4 and c.backend.bucket == "strata-hot"


def test_compose_commands_are_real_cli_commands() -> None:
    from gateway.cli import build_parser

    text = (CONF / "compose" / "docker-compose.yml").read_text()
    entrypoints = re.findall(r"entrypoint: \[(.*)\]", text)
    assert entrypoints
    for line in entrypoints:
        argv = [a.strip().strip('"') for a in line.split(",")]
        assert argv[0] == "strata"
        build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown command or flag
