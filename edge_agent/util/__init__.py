"""Small helpers with no knowledge of models or messaging: files on disk, retry backoff."""
