-- bambid SQLite schema, version 2: guest sessions, moderation.
--
-- Applied by bambid.storage.sqlite in one transaction together with
-- "PRAGMA user_version = 2", after 0001 (on a new database, right after it).
-- bambid_username_key() is models.username_key (str.casefold), registered on
-- the connection by the migration runner (SQL's lower() folds ASCII only). It
-- fills in existing rows here and is never part of the schema itself, so that
-- any SQLite client can still read and write the file.

-- Sessions: guest sessions, and lookups by user (list / logout everywhere).
ALTER TABLE sessions ADD COLUMN guest INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN username_key TEXT NOT NULL DEFAULT '';
UPDATE sessions SET username_key = bambid_username_key(username);
CREATE INDEX sessions_username ON sessions (username_key);

-- A deleted chat message keeps its row and seq; its text, mentions and links
-- are emptied.
ALTER TABLE chat_messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;

-- Bans and mutes: at most one of each kind per person. expires_at NULL means
-- until lifted.
CREATE TABLE sanctions (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('ban', 'mute')),
    username     TEXT NOT NULL,
    username_key TEXT NOT NULL,
    reason       TEXT NOT NULL,
    by_username  TEXT NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL,
    UNIQUE (kind, username_key)
);
