"""Client matrix: real S3 clients (aws-cli 1 and 2, boto3, s3fs, rclone, s3cmd, minio-py)
upload, download, list, copy and delete against a real Strata server over HTTP."""
