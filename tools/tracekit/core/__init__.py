"""The vocabulary every area shares: errors, file locations, record schemas and units, JSON Lines, clocks,
Redis keys and the connection to Redis, CLI helpers. Imports nothing from the other areas."""
