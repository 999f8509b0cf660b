-- bambid SQLite schema, version 5: profiles and progression.
--
-- Applied by bambid.storage.sqlite in one transaction together with
-- "PRAGMA user_version = 5", after 0004 (on a new database, right after it).
-- bambid_username_key() is models.username_key (str.casefold), registered on
-- the connection by the migration runner; it fills in existing rows and is
-- never part of the schema.

-- Likes and loves: at most one of each kind per person per profile. The
-- profiles' likes and loves columns are kept equal to the number of rows here
-- for that profile, in the transaction that adds or removes a row.
CREATE TABLE reactions (
    id        INTEGER PRIMARY KEY,
    from_key  TEXT NOT NULL,
    from_user TEXT NOT NULL,
    to_key    TEXT NOT NULL,
    to_user   TEXT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('like', 'love')),
    UNIQUE (from_key, to_key, kind)
);
-- Reactions a profile received (deleting a person; the unique key serves
-- the reactions a person gave).
CREATE INDEX reactions_to ON reactions (to_key, kind);

-- No reaction was recorded before this version, so the exact counts are 0.
UPDATE profiles SET likes = 0, loves = 0;

-- The community search matches the casefolded display name (SQL's lower()
-- folds ASCII only), kept beside it like username_key beside username.
ALTER TABLE profiles ADD COLUMN display_name_key TEXT NOT NULL DEFAULT '';
UPDATE profiles SET display_name_key = bambid_username_key(display_name);

-- The community list's orders, each with its tie-break by name.
CREATE INDEX profiles_xp ON profiles (xp DESC, username_key);
CREATE INDEX profiles_likes ON profiles (likes DESC, username_key);
CREATE INDEX profiles_loves ON profiles (loves DESC, username_key);
CREATE INDEX profiles_joined ON profiles (created_at DESC, username_key);
-- A substring search cannot seek in a B-tree; this narrow covering index is
-- what counting the matches scans instead of the wide rows (bio, preferences).
CREATE INDEX profiles_search ON profiles (username_key, display_name_key, visibility);
