"""Offline-safe maintenance jobs over a gateway's stores (fsck, stats, gc, keys): no HTTP, no CLI."""
