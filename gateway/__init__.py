"""Strata gateway: the S3-compatible HTTP front end and its protocol pieces."""
