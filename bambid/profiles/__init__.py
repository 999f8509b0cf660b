"""Profiles and progress: the one XP table (``XpTable``) and the server-side
awards (``XpService``). Importing this package has no side effects."""

from bambid.profiles.xp import Progress, XpService, XpTable

__all__ = ["Progress", "XpService", "XpTable"]
