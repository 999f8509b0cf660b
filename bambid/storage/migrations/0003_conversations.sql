-- bambid SQLite schema, version 3: many companion conversations per person.
--
-- Applied by bambid.storage.sqlite in one transaction together with
-- "PRAGMA user_version = 3", after 0002 (on a new database, right after it).
--
-- Until now a person had one conversation (owner_key was the primary key).
-- From now on a conversation is identified by its conversation_id (a UUID as
-- 32 lowercase hex digits); a person has many, and the one updated last is
-- their current one. SQLite cannot drop a constraint, so the table is rebuilt:
-- existing conversations are kept, each given a new id by bambid_uuid_hex()
-- (uuid.uuid4().hex, registered on the connection by the migration runner;
-- never part of the schema).

ALTER TABLE conversations RENAME TO conversations_0002;

CREATE TABLE conversations (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL UNIQUE,
    owner_key       TEXT NOT NULL,
    owner           TEXT NOT NULL,
    title           TEXT NOT NULL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    turns           TEXT NOT NULL DEFAULT '[]',
    metadata        TEXT NOT NULL DEFAULT '{}'
);

INSERT INTO conversations
    (conversation_id, owner_key, owner, title, created_at, updated_at, turns, metadata)
SELECT bambid_uuid_hex(), owner_key, owner, title, created_at, updated_at, turns, metadata
FROM conversations_0002
ORDER BY owner_key;

DROP TABLE conversations_0002;

-- A person's conversations, updated last first (the current one first).
CREATE INDEX conversations_owner ON conversations (owner_key, updated_at DESC);
