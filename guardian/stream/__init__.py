"""The account's picture of itself: Kraken Futures' WebSocket v1 feeds (fills, positions, open orders,
balances, notices), applied in order by one owner, checked against REST, shown everywhere."""
