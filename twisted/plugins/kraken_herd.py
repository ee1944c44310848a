from twisted.application.service import ServiceMaker

kraken_herd = ServiceMaker(
    "Kraken herd", "kraken.herd.tap", "Origin, tracker, build-index, proxy and agents in one process", "kraken-herd"
)
