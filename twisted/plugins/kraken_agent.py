from twisted.application.service import ServiceMaker

kraken_agent = ServiceMaker(
    "Kraken agent", "kraken.agent.tap", "Read-only registry fed by the P2P network", "kraken-agent"
)
