from twisted.application.service import ServiceMaker

kraken_proxy = ServiceMaker(
    "Kraken proxy", "kraken.proxy.tap", "Read-write Docker registry that builders push to", "kraken-proxy"
)
