"""Child processes of the test services (Strata, Kafka, SeaweedFS, Redis): one way to stop
them."""

from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
    """Send ``sig`` (a stopped process is continued first, so it can act on it), wait up to
    ``grace`` seconds, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode
