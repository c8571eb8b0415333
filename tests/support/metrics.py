"""Scraping a real server's Prometheus metrics in tests."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from support.server import StrataServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: StrataServer) -> tuple[set[str], Samples]:
    """The metric family names and every sample that ``GET /metrics`` answers."""
    resp = requests.get(f"{server.endpoint}/metrics", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    families, samples = set(), {}
    for family in text_string_to_metric_families(resp.text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
