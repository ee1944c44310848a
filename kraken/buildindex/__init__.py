"""The build-index: tag -> manifest digest, per-repository manifest records
and the listings the registry API needs, behind an HTTP API (``http.py``) and
its client (``client.py``)."""
