"""The origin: the dedicated seeder and content-addressed blob store."""
