from twisted.application.service import ServiceMaker

kraken_build_index = ServiceMaker(
    "Kraken build-index",
    "kraken.buildindex.tap",
    "Tags, manifest records and listings, checked against the origin",
    "kraken-build-index",
)
