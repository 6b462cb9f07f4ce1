-- mailbag schema, version 1: users, maildrops and messages.
CREATE TABLE users (
    name   text PRIMARY KEY,
    -- The same `{SCHEME}data` format as a passwd-file's second field.
    secret text NOT NULL
);

CREATE TABLE maildrops (
    id   bigserial PRIMARY KEY,
    -- The canonical user name; the maildrop outlives its user row, as
    -- Maildirs outlive passwd-file lines.
    name text NOT NULL UNIQUE
);

CREATE TABLE messages (
    id          bigserial PRIMARY KEY,
    maildrop_id bigint NOT NULL REFERENCES maildrops (id) ON DELETE CASCADE,
    -- RFC 1939 UIDL: 1-70 octets of 0x21-0x7E, unique across the database.
    uidl        text NOT NULL UNIQUE
                CHECK (uidl ~ '^[!-~]{1,70}$'),
    -- The size with CRLF line endings, before dot-stuffing (STAT, LIST).
    size        bigint NOT NULL CHECK (size >= 0),
    received    timestamptz NOT NULL DEFAULT now(),
    seen        boolean NOT NULL DEFAULT false,
    body        bytea NOT NULL
);

-- Uncompressed out-of-line storage: substring() then reads only the TOAST
-- chunks it needs, so RETR can stream a large message piece by piece.
ALTER TABLE messages ALTER COLUMN body SET STORAGE EXTERNAL;

CREATE INDEX messages_maildrop ON messages (maildrop_id, id);
