"""Public chat: rooms, presence, history and resume (``hub``), what a message
may contain (``text``, ``mentions``, ``links``), moderation, and the WebSocket
handlers that expose them (``handlers``). The contract is docs/protocol.md."""
