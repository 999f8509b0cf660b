"""Who is on the other end of a request or a connection."""

from __future__ import annotations

import attrs

from bambid.models import username_key


@attrs.frozen
class Identity:
    """A signed-in person: a registered account or a guest.

    ``name`` is the display name as registered (or as the guest chose it);
    ``key`` is its case-insensitive identity. Guests always have role "user".
    """

    name: str
    role: str = "user"
    guest: bool = False

    @property
    def key(self) -> str:
        return username_key(self.name)

    @property
    def is_moderator(self) -> bool:
        return self.role in ("moderator", "admin")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def public(self) -> dict[str, object]:
        """How other people see this person in protocol messages."""
        return {"name": self.name, "role": self.role, "guest": self.guest}
