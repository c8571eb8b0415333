"""Benchmarks for Strata: load generator, codec ceiling, dedup corpus, reports and the guard.

One job per module:

* :mod:`bench.cli` -- the ``python -m bench`` command line;
* :mod:`bench.units` -- sizes (``64MiB``) and MB/s (MB = 10^6 bytes);
* :mod:`bench.signer` -- a small SigV4 header signer (UNSIGNED-PAYLOAD);
* :mod:`bench.data` -- random/text payloads made unique per object;
* :mod:`bench.corpus` -- the deterministic versioned corpus;
* :mod:`bench.client` -- a lean aiohttp S3 client and streamed request bodies;
* :mod:`bench.load` -- multi-process load generation and timing;
* :mod:`bench.stats` -- per-operation samples, percentiles, summaries;
* :mod:`bench.progress` -- the stderr progress line;
* :mod:`bench.report` -- tables, JSON and plots;
* :mod:`bench.ceiling` -- the in-process codec ceiling;
* :mod:`bench.dedup` -- physical vs ideal bytes over the versioned corpus;
* :mod:`bench.noop` -- the no-op S3 server;
* :mod:`bench.small` -- small objects, no-op vs endpoint;
* :mod:`bench.server` -- child server processes (embedded Strata, no-op);
* :mod:`bench.suite` -- the standard measurement set and its ratios;
* :mod:`bench.guard` -- the regression guard's pass/fail rule.

``bench`` depends on ``chunker``, ``dedup`` and ``crypto`` (for the ceiling and the ideal
dedup figure), never on ``gateway``: it talks to the gateway over HTTP only.
"""
