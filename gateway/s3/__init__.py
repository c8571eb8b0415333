"""S3 protocol: errors, SigV4 authentication, aws-chunked bodies and checksums."""
