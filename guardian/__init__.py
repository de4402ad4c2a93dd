"""guardian: keeps Kraken Futures' dead man's switch armed and guards what automated traders send."""

__version__ = "0.1.0"
