-- One model per group: a teacher turns groups on (with a size), students join a named group or are placed in one
-- when they press Start; a group's members share its job, its card, its model and its chat.

CREATE TABLE class_groups_settings (
    guild_id   INTEGER PRIMARY KEY,
    group_size INTEGER NOT NULL,                  -- most members in one group; no row: groups are off
    updated_at INTEGER NOT NULL
);

CREATE TABLE group_members (
    guild_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    group_name TEXT NOT NULL,                     -- as first written (matched without regard to case)
    joined_at  INTEGER NOT NULL,
    PRIMARY KEY (guild_id, user_id)               -- a student is in one group at a time
);
CREATE INDEX group_members_by_group ON group_members (guild_id, group_name COLLATE NOCASE);

-- The group whose job this is (NULL: one student's own job).
ALTER TABLE jobs ADD COLUMN group_name TEXT;
CREATE INDEX jobs_by_group ON jobs (guild_id, group_name) WHERE group_name IS NOT NULL;
