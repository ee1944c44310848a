from twisted.application.service import ServiceMaker

kraken_tracker = ServiceMaker(
    "Kraken tracker", "kraken.tracker.tap", "Peer tracker and metainfo server", "kraken-tracker"
)
