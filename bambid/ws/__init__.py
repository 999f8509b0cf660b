"""The WebSocket endpoint: framing, dispatch and limits. No business logic here."""
