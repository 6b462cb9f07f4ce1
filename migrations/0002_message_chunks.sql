-- mailbag schema, version 2: message bodies as rows of mailbag's own
-- chunks, each small enough to stay in its heap page (no TOAST), read in
-- ranges of rows by RETR and TOP.
--
-- Cost on a big database: every body is read once and written once more
-- (new table space and WAL as large as the mail; 1.1 GB in 6 s on a
-- 2-vCPU machine with the data cached), all in one transaction that
-- holds the messages table: stop the nodes first. The old copies stay on
-- disk, unreachable, until the messages are deleted or `VACUUM FULL
-- messages` rewrites the table (docs/DEPLOYMENT.md).
CREATE TABLE message_chunks (
    message_id bigint NOT NULL,
    -- 0, 1, 2, ...: the body is the concatenation of `data` in this order.
    seq        integer NOT NULL CHECK (seq >= 0),
    -- At most 8,000 octets, so that a row fits in one 8 KiB page.
    data       bytea NOT NULL,
    PRIMARY KEY (message_id, seq)
);

-- Never compressed, never moved out of line.
ALTER TABLE message_chunks ALTER COLUMN data SET STORAGE PLAIN;

INSERT INTO message_chunks (message_id, seq, data)
SELECT m.id, s.seq, substring(m.body FROM s.seq * 8000 + 1 FOR 8000)
  FROM messages m,
       generate_series(0, (octet_length(m.body) + 7999) / 8000 - 1) AS s (seq);

-- Added after the copy: one check of all rows instead of one per row.
ALTER TABLE message_chunks
  ADD FOREIGN KEY (message_id) REFERENCES messages (id) ON DELETE CASCADE;

ALTER TABLE messages DROP COLUMN body;
