"""Text to speech: backends (Kokoro-FastAPI, espeak-ng), the sentence splitter,
the audio cache and the pipeline that speaks companion replies as they stream
(docs/voice.md)."""
