"""Object storage for backups: where a backup may live (a directory or ``s3://BUCKET/PREFIX``), the S3
client from the standard AWS chain, streamed multipart uploads proven by their checksums, reads back.
Imports only the shared modules — never pg/ or the steps; backup/, restore/, fleet/ and cli/ use it."""
