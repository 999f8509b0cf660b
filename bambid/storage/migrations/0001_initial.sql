-- bambid SQLite schema, version 1.
--
-- Applied by bambid.storage.sqlite in one transaction together with
-- "PRAGMA user_version = 1". Times are POSIX seconds (REAL, UTC). Columns
-- named *_key hold models.username_key() of the name beside them: lookups are
-- case-insensitive, names are returned as first written. Structured values
-- (mentions, links, preferences, turns, details...) are JSON text.

CREATE TABLE accounts (
    username_key  TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at    REAL NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    username   TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE profiles (
    username_key  TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    created_at    REAL NOT NULL,
    last_active   REAL NOT NULL,
    xp            INTEGER NOT NULL DEFAULT 0 CHECK (xp >= 0),
    display_name  TEXT NOT NULL DEFAULT '',
    bio           TEXT NOT NULL DEFAULT '',
    social_links  TEXT NOT NULL DEFAULT '{}',
    likes         INTEGER NOT NULL DEFAULT 0,
    loves         INTEGER NOT NULL DEFAULT 0,
    profile_style TEXT NOT NULL DEFAULT 'default',
    visibility    TEXT NOT NULL DEFAULT 'public',
    preferences   TEXT NOT NULL DEFAULT '{}',
    usage_stats   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX profiles_last_active ON profiles (last_active DESC);

CREATE TABLE chat_messages (
    id           INTEGER PRIMARY KEY,
    message_id   TEXT NOT NULL UNIQUE,
    room         TEXT NOT NULL,
    seq          INTEGER NOT NULL CHECK (seq >= 1),
    username     TEXT NOT NULL,
    username_key TEXT NOT NULL,
    text         TEXT NOT NULL,
    timestamp    REAL NOT NULL,
    message_type TEXT NOT NULL,
    guest        INTEGER NOT NULL,
    mentions     TEXT NOT NULL DEFAULT '[]',
    links        TEXT NOT NULL DEFAULT '[]',
    reply_to     TEXT,
    UNIQUE (room, seq)
);
CREATE INDEX chat_messages_timestamp ON chat_messages (timestamp DESC);
CREATE INDEX chat_messages_username ON chat_messages (username_key);

CREATE TABLE conversations (
    owner_key  TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    title      TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    turns      TEXT NOT NULL DEFAULT '[]',
    metadata   TEXT NOT NULL DEFAULT '{}'
);

-- Append-only interaction logs, read back per user, newest first.

CREATE TABLE ai_interactions (
    id               INTEGER PRIMARY KEY,
    username         TEXT NOT NULL,
    username_key     TEXT NOT NULL,
    interaction_type TEXT NOT NULL,
    input_data       TEXT NOT NULL,
    output_data      TEXT NOT NULL,
    duration         REAL NOT NULL,
    timestamp        REAL NOT NULL,
    connection_id    TEXT NOT NULL,
    error            TEXT
);
CREATE INDEX ai_interactions_timestamp ON ai_interactions (timestamp DESC);
CREATE INDEX ai_interactions_user ON ai_interactions (username_key, timestamp DESC);

CREATE TABLE audio_interactions (
    id           INTEGER PRIMARY KEY,
    username     TEXT NOT NULL,
    username_key TEXT NOT NULL,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    timestamp    REAL NOT NULL,
    details      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audio_interactions_user ON audio_interactions (username_key, timestamp DESC);

CREATE TABLE user_interactions (
    id           INTEGER PRIMARY KEY,
    username     TEXT NOT NULL,
    username_key TEXT NOT NULL,
    action       TEXT NOT NULL,
    timestamp    REAL NOT NULL,
    details      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX user_interactions_user ON user_interactions (username_key, timestamp DESC);

CREATE TABLE clicked_urls (
    id           INTEGER PRIMARY KEY,
    username     TEXT NOT NULL,
    username_key TEXT NOT NULL,
    url          TEXT NOT NULL,
    timestamp    REAL NOT NULL,
    message_id   TEXT
);
CREATE INDEX clicked_urls_user ON clicked_urls (username_key, timestamp DESC);

CREATE TABLE user_tag_interactions (
    id           INTEGER PRIMARY KEY,
    username     TEXT NOT NULL,
    username_key TEXT NOT NULL,
    by_username  TEXT NOT NULL,
    room         TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    timestamp    REAL NOT NULL
);
CREATE INDEX user_tag_interactions_user ON user_tag_interactions (username_key, timestamp DESC);
