"""The HTTP side: Klein routes, pages, JSON API, site-wide limits and headers."""
