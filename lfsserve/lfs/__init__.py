"""Git LFS front end: batch API, basic transfer, file locking."""
