"""HTTP routes of triggers (docs/api.md, "Triggers" and "Pages").

- ``GET /api/triggers`` and the original's ``GET /config/triggers.json``: the
  catalog in effect (``Catalog.as_json``) with ``version`` the engine's
  (one more per reload), ``Cache-Control: no-cache``.
- ``GET /audio/triggers/<key>``: the trigger's cue. **302** to its file
  under ``/static/audio/triggers/`` when the catalog names one that exists;
  otherwise its name is spoken once through ``Speech.speak`` (recorded for
  ``system`` with ``details`` ``{source: "trigger", key}``) and the answer is
  a **302** to the clip (``/audio/tts/<key>.<ext>``). The clip is remembered
  while it stays in the audio cache, so later requests redirect at once;
  concurrent first requests share one synthesis (``Speech``). Unknown key:
  404; synthesis failed: **502** ``tts_failed`` (504 ``tts_timeout``).
- ``GET /psychodelic-trigger-mania``: the page ``trigger-mania.html``
  (``WebApp.page``: every page's context, plus ``title``).
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.web.iweb import IRequest
from werkzeug.exceptions import NotFound

from bambid.triggers.catalog import Trigger
from bambid.triggers.engine import TriggerEngine
from bambid.voice.backend import TTSError
from bambid.voice.speech import Clip, Speech
from bambid.web.app import ApiError, WebApp, json_response

#: Who synthesised cues are recorded for.
SYSTEM = "system"
PAGE_TEMPLATE = "trigger-mania.html"


@attrs.frozen
class _Spoken:
    name: str
    clip: Clip


class TriggerRoutes:
    """The trigger routes (see the module doc)."""

    def __init__(
        self, web: WebApp, engine: TriggerEngine, speech: Speech, read_max_bytes: int
    ) -> None:
        self.web = web
        self.engine = engine
        self.speech = speech
        self.read_max_bytes = read_max_bytes
        self._spoken: dict[str, _Spoken] = {}

    async def catalog(self, request: IRequest) -> bytes:
        loaded = self.engine.loaded
        document = loaded.catalog.as_json(loaded.audio_url)
        document["version"] = self.engine.version
        body = json_response(request, 200, document)
        request.setHeader(b"Cache-Control", b"no-cache")
        return body

    async def audio(self, request: IRequest, key: str) -> bytes:
        loaded = self.engine.loaded
        trigger = loaded.catalog.get(key)
        if trigger is None:
            raise NotFound()
        if key in loaded.with_files:
            url = loaded.audio_url(trigger)
        else:
            url = (await self._synthesised(trigger)).url
        request.setHeader(b"Cache-Control", b"no-cache")
        request.redirect(url.encode("ascii"))
        return b""

    async def _synthesised(self, trigger: Trigger) -> Clip:
        spoken = self._spoken.get(trigger.key)
        if (
            spoken is not None
            and spoken.name == trigger.name
            and self.speech.cache.lookup(spoken.clip.key, spoken.clip.format) is not None
        ):
            return spoken.clip
        try:
            clip = await self.speech.speak(
                trigger.name,
                None,
                None,
                username=SYSTEM,
                details={"source": "trigger", "key": trigger.key},
            )
        except TTSError as e:
            if e.code == "timeout":
                raise ApiError(504, "tts_timeout", e.message) from None
            raise ApiError(502, "tts_failed", e.message) from None
        self._spoken[trigger.key] = _Spoken(trigger.name, clip)
        return clip

    async def mania(self, request: IRequest) -> Any:
        return await self.web.page(
            request, PAGE_TEMPLATE, title="Trigger mania", read_max_bytes=self.read_max_bytes
        )


def install_trigger_routes(
    web: WebApp, engine: TriggerEngine, speech: Speech, read_max_bytes: int
) -> TriggerRoutes:
    """Add ``/api/triggers``, ``/config/triggers.json``, ``/audio/triggers/<key>``
    and ``/psychodelic-trigger-mania`` (told ``triggers.read_max_bytes``) to ``web.app``."""
    routes = TriggerRoutes(web, engine, speech, read_max_bytes)
    get = ["GET", "HEAD"]
    app = web.app
    app.route("/api/triggers", methods=get, endpoint="triggers_api")(routes.catalog)
    app.route("/config/triggers.json", methods=get, endpoint="triggers_config")(routes.catalog)
    app.route("/audio/triggers/<key>", methods=get, endpoint="triggers_audio")(routes.audio)
    app.route("/psychodelic-trigger-mania", methods=get, endpoint="trigger_mania")(routes.mania)
    return routes
