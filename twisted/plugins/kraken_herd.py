from twisted.application.service import ServiceMaker

kraken_herd = ServiceMaker(
    "Kraken herd", "kraken.herd.tap", "Origin, build-index and proxy in one process", "kraken-herd"
)
