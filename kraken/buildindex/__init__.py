"""The build-index: tag -> manifest digest, per-repository manifest records
and the listings the registry API needs. Its rules are ``index.py``
(``TagIndex``), its state ``tags.py``, its copies in storage backends
``archive.py``; behind an HTTP API (``http.py``) and its client
(``client.py``)."""
