"""The AI companion's backends: the OpenAI-compatible LLM client and its SSE parser."""

from bambid.ai.llm import BackendError, Completion, GenerationParams, LLMBackend, Timeouts
from bambid.ai.sse import Event, SSEError, SSEParser

__all__ = [
    "BackendError",
    "Completion",
    "Event",
    "GenerationParams",
    "LLMBackend",
    "SSEError",
    "SSEParser",
    "Timeouts",
]
