-- bambid SQLite schema, version 6: shared settings.
--
-- Applied by bambid.storage.sqlite in one transaction together with
-- "PRAGMA user_version = 6", after 0005 (on a new database, right after it).

-- Storage.get_setting / set_setting: one JSON value per key, shared by every
-- process that opens this database (the daemon, other instances, bambidctl).
-- "maintenance" is the maintenance-mode switch (bambid.maintenance). Keys
-- are checked by storage.interface.check_setting_key; setting a key to None
-- deletes its row.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL  -- compact JSON (storage.interface.encode_setting)
) WITHOUT ROWID;
