-- mailbag schema, version 4: a UIDL is unique within its maildrop (what
-- RFC 1939 asks), no longer across the whole database, so that `mailbag
-- import` keeps for every user the UIDL their old server showed, even
-- where two users' old servers showed the same one (two Dovecot
-- mailboxes with one UIDVALIDITY, one message's X-UIDL in two qpopper
-- spools). UIDLs mailbag makes itself stay unique everywhere.
--
-- Cost: `messages` is read once to build the new index (no body is
-- read, nothing is rewritten), under a lock that makes deliveries and
-- deletions wait but lets logins list; the two changes of constraint
-- after it take the table alone for a moment.
CREATE UNIQUE INDEX messages_maildrop_uidl_key ON messages (maildrop_id, uidl);
ALTER TABLE messages
  ADD CONSTRAINT messages_maildrop_uidl_key UNIQUE USING INDEX messages_maildrop_uidl_key;
ALTER TABLE messages DROP CONSTRAINT messages_uidl_key;
