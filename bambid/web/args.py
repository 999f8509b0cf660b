"""Reading a request's query or form arguments."""

from __future__ import annotations

from twisted.web.iweb import IRequest


def request_arg(request: IRequest, name: str) -> str | None:
    """The first value of argument ``name`` (query string or form body);
    None when it is absent or not UTF-8."""
    values = request.args.get(name.encode("ascii")) if request.args else None
    if not values:
        return None
    try:
        value: str = values[0].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return value
