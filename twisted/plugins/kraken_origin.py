from twisted.application.service import ServiceMaker

kraken_origin = ServiceMaker(
    "Kraken origin", "kraken.origin.tap", "Seeder and content-addressed blob store", "kraken-origin"
)
