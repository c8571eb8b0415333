"""The metadata store: buckets, object versions, multipart uploads, the chunk index, packs,
users and the event outbox. SQL lives only in this package."""
