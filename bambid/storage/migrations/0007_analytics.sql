-- bambid SQLite schema, version 7: indexes for the admin analytics.
--
-- Applied by bambid.storage.sqlite in one transaction together with
-- "PRAGMA user_version = 7". Storage.tally and Storage.count_per_day count
-- the records of a time range across every person; the indexes of 0001 on
-- these tables lead with username_key, so these lead with the time, followed
-- by the columns tally groups by (it then reads the index alone, never the
-- table). chat_messages and ai_interactions have time indexes since 0001;
-- profiles have last_active (0001) and xp (0005).

CREATE INDEX user_interactions_timestamp ON user_interactions (timestamp, action);
CREATE INDEX audio_interactions_timestamp ON audio_interactions (timestamp, kind, name);
