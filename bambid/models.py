"""Domain records shared by every layer.

Every record is a frozen attrs class. Times are POSIX seconds (float, UTC) taken
from an injected clock, never read here. Storage backends translate records to and
from their own documents or rows; nothing else knows how a record is stored.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import attrs

ROLES = ("user", "moderator", "admin")


def username_key(username: str) -> str:
    """The case-insensitive identity of a username (unique per key)."""
    return username.casefold()


@attrs.frozen
class Account:
    """A registered login. ``password_hash`` is an argon2id encoded hash."""

    username: str
    password_hash: str
    role: str
    created_at: float

    @property
    def key(self) -> str:
        return username_key(self.username)


@attrs.frozen
class Session:
    """A login session. Only the hash of the opaque cookie token is stored.
    A guest session has no account: ``username`` is the name the guest chose."""

    token_hash: str
    username: str
    created_at: float
    expires_at: float
    guest: bool = False


SANCTION_KINDS = ("ban", "mute")


@attrs.frozen
class Sanction:
    """A moderation measure against a person: a ban (no login, no connection)
    or a mute (no posting). ``expires_at`` None means until lifted."""

    kind: str
    username: str
    reason: str
    by: str
    created_at: float
    expires_at: float | None = None

    def active_at(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@attrs.frozen
class SocialLinks:
    twitter: str = ""
    instagram: str = ""
    discord: str = ""
    reddit: str = ""
    custom: str = ""


@attrs.frozen
class UsageStats:
    """What the server counted of a person's use (``Storage.bump_usage``):
    connections, seconds online, triggers fired, chat messages posted and
    companion replies received. Never taken from the client."""

    sessions_count: int = 0
    total_time_spent: float = 0.0
    triggers_activated: int = 0
    messages_posted: int = 0
    companion_replies: int = 0


@attrs.frozen
class Profile:
    """A person's public profile and progress (seed: Profiles collection)."""

    username: str
    created_at: float
    last_active: float
    xp: int = 0
    display_name: str = ""
    bio: str = ""
    social_links: SocialLinks = SocialLinks()
    likes: int = 0
    loves: int = 0
    profile_style: str = "default"
    visibility: str = "public"
    preferences: dict[str, Any] = attrs.field(factory=dict)
    usage_stats: UsageStats = UsageStats()


#: Profile fields that ``Storage.update_profile`` may set.
PROFILE_UPDATABLE = frozenset(
    {
        "display_name",
        "bio",
        "social_links",
        "profile_style",
        "visibility",
        "preferences",
        "last_active",
        "usage_stats",
    }
)


#: ``Storage.list_profiles`` orders: XP (which also orders by level), likes,
#: loves (each most first), join date (newest first) and name; ties by name.
PROFILE_SORTS = ("xp", "likes", "loves", "joined", "name")

#: What one person may give another's profile, once each (``Storage.set_reaction``).
REACTION_KINDS = ("like", "love")


@attrs.frozen
class Reaction:
    """A like or a love that ``from_user`` gave ``to_user``'s profile."""

    from_user: str
    to_user: str
    kind: str


@attrs.frozen
class Mention:
    username: str
    index: int


@attrs.frozen
class LinkRef:
    url: str
    is_clean: bool


#: ``message_type`` values: a person's message, a moderator's notice, and the
#: record that a moderator deleted message ``reply_to``.
MESSAGE_TYPES = ("user", "notice", "deletion")


@attrs.frozen
class NewChatMessage:
    """A chat message before storage has given it an id and a sequence number."""

    room: str
    username: str
    text: str
    timestamp: float
    message_type: str = "user"
    guest: bool = False
    mentions: tuple[Mention, ...] = ()
    links: tuple[LinkRef, ...] = ()
    reply_to: str | None = None


@attrs.frozen
class ChatMessage:
    """A stored public chat message; ``seq`` is 1, 2, 3... per room, no gaps.
    A deleted message keeps its place (``seq``) with ``deleted`` set and its
    text, mentions and links emptied."""

    message_id: str
    room: str
    seq: int
    username: str
    text: str
    timestamp: float
    message_type: str = "user"
    guest: bool = False
    mentions: tuple[Mention, ...] = ()
    links: tuple[LinkRef, ...] = ()
    reply_to: str | None = None
    deleted: bool = False


@attrs.frozen
class ConversationTurn:
    role: str  # "system" | "user" | "assistant"
    content: str
    timestamp: float


def new_conversation_id() -> str:
    return uuid.uuid4().hex


@attrs.frozen
class Conversation:
    """A companion conversation (seed: SessionHistory). A person has many; the
    one updated last is their current one. ``owner`` is the account name, or
    ``guest:<name>`` for a guest."""

    owner: str
    title: str
    created_at: float
    updated_at: float
    turns: tuple[ConversationTurn, ...] = ()
    metadata: dict[str, Any] = attrs.field(factory=dict)
    conversation_id: str = attrs.field(factory=new_conversation_id)


# --- append-only interaction logs -------------------------------------------
#
# Each log record class names its collection. ``Storage.record`` stores any of
# them; ``Storage.list_records`` reads one kind back, newest first.


@attrs.frozen
class AIInteraction:
    collection: ClassVar[str] = "ai_interactions"
    username: str
    interaction_type: str
    input_data: str
    output_data: str
    duration: float
    timestamp: float
    connection_id: str = ""
    error: str | None = None
    model: str = ""
    backend: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


@attrs.frozen
class AudioInteraction:
    collection: ClassVar[str] = "audio_interactions"
    username: str
    kind: str  # "tts" | "trigger" | ...
    name: str
    timestamp: float
    details: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class UserInteraction:
    collection: ClassVar[str] = "user_interactions"
    username: str
    action: str
    timestamp: float
    details: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ClickedUrl:
    collection: ClassVar[str] = "clicked_urls"
    username: str
    url: str
    timestamp: float
    message_id: str | None = None


@attrs.frozen
class UserTagInteraction:
    collection: ClassVar[str] = "user_tag_interactions"
    username: str  # who was mentioned
    by: str  # who mentioned them
    room: str
    message_id: str
    timestamp: float


LogRecord = AIInteraction | AudioInteraction | UserInteraction | ClickedUrl | UserTagInteraction
LOG_RECORD_TYPES: tuple[type[LogRecord], ...] = (
    AIInteraction,
    AudioInteraction,
    UserInteraction,
    ClickedUrl,
    UserTagInteraction,
)
