"""``GET /go?m=<message_id>&i=<index>``: click-through for links in chat.

Every link in a ``chat.message`` points here (``href``). The route finds link
``i`` of message ``m``, records a ``ClickedUrl`` for a GET by a signed-in
account that chose to have interaction analytics kept (the consent check of
``bambid.profiles.interactions``, read afresh on every click: nobody before
choosing, nobody after a "no", never guests or signed-out visitors; a HEAD is
not a click), then either redirects (302) to a
clean link or shows ``go.html``, a warning page naming the URL and why it was
flagged, with a link to continue and one back. Unknown messages, deleted ones
and bad indexes get the 404 page. Responses carry ``Referrer-Policy:
no-referrer`` (the destination does not learn which chat sent the visitor)
and ``Cache-Control: no-store`` (each click is counted).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from werkzeug.exceptions import NotFound

from bambid.auth.sessions import SESSION_COOKIE, Banned, identify
from bambid.chat.links import LinkChecker, location_header
from bambid.identity import Identity
from bambid.models import ClickedUrl
from bambid.profiles.interactions import InteractionRecorder
from bambid.storage import Storage
from bambid.web.app import WebApp

#: What the warning page says for each ``reason``.
EXPLANATIONS = {
    "denylisted": "Its site is on this server's list of sites known for malware, scams or abuse.",
    "ip_address": "It points to a bare IP address instead of a named site, which hides "
    "who runs it.",
    "credentials": "It contains a user name or password before the site name, a common trick "
    "to make a link look like it goes somewhere else.",
    "lookalike": "Its site name uses look-alike letters from other alphabets or an encoded "
    "(punycode) name, so it may imitate a site you know.",
}


class LinkRoutes:
    """The ``/go`` route (see the module doc)."""

    def __init__(
        self,
        web: WebApp,
        storage: Storage,
        clock: IReactorTime,
        admins: frozenset[str],
        links: LinkChecker,
    ) -> None:
        self.web = web
        self.storage = storage
        self.clock = clock
        self.admins = admins
        self.links = links
        self.consent = InteractionRecorder(storage, clock)

    async def go(self, request: IRequest) -> Any:
        message_id = _arg(request, b"m")
        index_text = _arg(request, b"i")
        if not message_id or not index_text.isdigit() or len(index_text) > 4:
            raise NotFound()
        message = await self.storage.get_chat_message(message_id)
        index = int(index_text)
        if message is None or message.deleted or index >= len(message.links):
            raise NotFound()
        link = message.links[index]
        if not link.url.lower().startswith(("http://", "https://")):
            raise NotFound()
        if request.method == b"GET":  # a HEAD (a link preview) is not a click
            who = await self._who(request)
            if who is not None and await self.consent.allowed(who):
                await self.storage.record(
                    ClickedUrl(
                        username=who.name,
                        url=link.url,
                        timestamp=self.clock.seconds(),
                        message_id=message.message_id,
                    )
                )
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"Cache-Control", b"no-store")
        if link.is_clean:
            request.setResponseCode(302)
            request.setHeader(b"Location", location_header(link.url))
            return b""
        reason = self.links.reason(link.url) or "denylisted"
        return await self.web.page(
            request,
            "go.html",
            title="Check this link",
            url=link.url,
            reason=reason,
            explanation=EXPLANATIONS.get(reason, EXPLANATIONS["denylisted"]),
        )

    async def _who(self, request: IRequest) -> Identity | None:
        """The signed-in person (None: nobody, or a banned person)."""
        cookie = request.getCookie(SESSION_COOKIE.encode())
        token = cookie.decode("utf-8", "replace") if cookie else None
        try:
            return await identify(self.storage, self.clock, self.admins, token)
        except Banned:
            return None


def _arg(request: IRequest, name: bytes) -> str:
    values = (request.args or {}).get(name) or [b""]
    return values[0].decode("utf-8", "replace")


def install_link_routes(
    web: WebApp,
    storage: Storage,
    clock: IReactorTime,
    admins: frozenset[str],
    links: LinkChecker,
) -> LinkRoutes:
    """Add ``GET /go`` to ``web.app``."""
    routes = LinkRoutes(web, storage, clock, admins, links)
    web.app.route("/go", methods=["GET", "HEAD"], endpoint="links_go")(routes.go)
    return routes
