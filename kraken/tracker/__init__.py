"""The tracker: takes announces, hands out peers, serves metainfo from the origins."""
