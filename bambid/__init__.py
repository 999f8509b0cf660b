"""bambid: a self-hosted, real-time AI companion chat server on Twisted."""

__version__ = "0.1.0"
