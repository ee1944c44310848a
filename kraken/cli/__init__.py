"""The `kraken` command's tools: for now the OCI image writer (``kraken.cli.image``), used by the demo, the
tests and the benchmarks to make images to push."""
