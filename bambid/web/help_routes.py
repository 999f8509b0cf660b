"""The help center's routes: ``/help`` (the list of pages and the search)
and ``/help/<slug>`` (one page).

``GET /help?q=...`` searches the pages (``HelpPages.search``; the query is
cut to 100 characters). ``GET /help/<slug>`` is a page with its table of
contents and links to the previous and next pages; a slug outside
``[a-z0-9-]+`` or naming no page gets the site's 404 page. The pages are
``HelpCenter.pages`` at the time of the request, so a reload (SIGHUP) shows at
once. The footer links of ``help.footer_links`` are given to every template
(a Jinja2 global: error pages, which are rendered without the page context,
carry them too).
"""

from __future__ import annotations

from twisted.web.iweb import IRequest
from werkzeug.exceptions import NotFound

from bambid.config import HelpConfig
from bambid.web.app import WebApp
from bambid.web.auth_routes import form_value
from bambid.web.helpcenter import SLUG, HelpCenter, footer_links, normalize_query


class HelpRoutes:
    def __init__(self, web: WebApp, center: HelpCenter) -> None:
        self.web = web
        self.center = center

    async def index(self, request: IRequest) -> bytes:
        pages = self.center.pages
        query = normalize_query(form_value(request, "q"))
        results = pages.search(query) if query else None
        return await self.web.page(
            request,
            "help.html",
            title="Help",
            pages=pages.pages,
            query=query,
            results=results,
        )

    async def page(self, request: IRequest, slug: str) -> bytes:
        pages = self.center.pages
        page = pages.get(slug) if SLUG.fullmatch(slug) else None
        if page is None:
            raise NotFound()
        previous, following = pages.neighbours(slug)
        return await self.web.page(
            request,
            "help_page.html",
            title=f"{page.title} · Help",
            page=page,
            previous=previous,
            following=following,
        )


def install_help_routes(web: WebApp, center: HelpCenter, config: HelpConfig) -> HelpRoutes:
    """Add ``/help`` and ``/help/<slug>`` to ``web.app`` and the footer links
    to every page."""
    routes = HelpRoutes(web, center)
    get = ["GET", "HEAD"]
    web.app.route("/help", methods=get, endpoint="help_index")(routes.index)
    web.app.route("/help/<string:slug>", methods=get, endpoint="help_page")(routes.page)
    web.templates.globals["footer_links"] = footer_links(config)
    return routes
