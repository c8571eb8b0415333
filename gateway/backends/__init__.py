"""Blob backends: where packs are stored (a local directory now, S3 buckets later)."""
