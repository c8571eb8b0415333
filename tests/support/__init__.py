"""Test-side helpers: server process control, raw HTTP, aws-chunked encoding, S3 data."""
