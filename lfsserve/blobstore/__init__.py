"""Content-addressed storage of LFS objects behind a small interface (local filesystem now, S3-compatible later)."""
