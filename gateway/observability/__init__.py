"""Observability of a gateway process: Prometheus metrics (``metrics``), structured request
and process logs with secret redaction (``logging``), the audit log (``audit``), the
operator endpoints ``/healthz``, ``/readyz`` and ``/metrics`` (``health``), and the
per-request record that ties them together (``record``)."""
