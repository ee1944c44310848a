"""The herd: every daemon in one process, for trying Kraken out and for tests."""
