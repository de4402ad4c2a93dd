"""The ws/v1 relay: Kraken Futures' WebSocket v1 served to bots with their local keys, fed from guardian's
upstream links (`guardian.stream`)."""
