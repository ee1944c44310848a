"""The ``kraken`` command (``kraken.cli.main``, console script ``kraken``): ``status`` (``kraken.cli.status``),
``image`` (``kraken.cli.image``, the OCI image writer the demo, the tests and the benchmarks make images with) and
``certs`` (``kraken.cli.certs``, the development CA)."""
