"""S3 operation handlers: each translates one S3 operation into runtime calls."""
