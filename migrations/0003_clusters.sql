-- mailbag schema, version 3: several clusters. Applied to every cluster
-- and to the directory database; a single-cluster deployment uses neither
-- the column nor the table.

-- Where a maildrop stands in a move between clusters (mailbag move-user):
-- 'active' serves logins and takes deliveries; 'moving' is being copied
-- away; 'incoming' is being filled by a move; 'moved' is the empty
-- tombstone left on a cluster the user moved away from (a node that read
-- the old placement finds it and asks the directory again).
ALTER TABLE maildrops
    ADD COLUMN state text NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'moving', 'incoming', 'moved'));

-- The directory: which cluster holds a user's maildrop. A row is written
-- the first time a node delivers to or opens the maildrop, and changed
-- only by mailbag move-user.
CREATE TABLE placements (
    -- The canonical user name, as maildrops.name.
    name      text PRIMARY KEY,
    -- The cluster's name in store.clusters.
    cluster   text NOT NULL,
    -- Set while a move to that cluster has not yet switched the placement.
    move_to   text,
    -- Set after the switch until the old cluster's copy is removed.
    move_from text,
    changed   timestamptz NOT NULL DEFAULT now()
);
