# POP3 and LMTP clients for the failover test (tests/it/ha.rs): poplib
# sessions that log in, RETR, DELE and QUIT, and smtplib.LMTP deliveries,
# all through the load balancer, until the file STOP exists. Every
# session and every delivery is one JSON line on stdout, with wall-clock
# times, for the test to check against the database afterwards.
#
# usage: ha_clients.py HOST POP3_PORT LMTP_PORT PASSWORD STOP POP3_PER_USER
#        LMTP_CLIENTS USER...

import json
import os
import poplib
import smtplib
import sys
import threading
import time

HOST, POP3_PORT, LMTP_PORT, PASSWORD, STOP, POP3_PER_USER, LMTP_CLIENTS = sys.argv[1:8]
POP3_PORT, LMTP_PORT = int(POP3_PORT), int(LMTP_PORT)
POP3_PER_USER, LMTP_CLIENTS = int(POP3_PER_USER), int(LMTP_CLIENTS)
USERS = sys.argv[8:]
# Bounded: no session reads more than this many messages.
MAX_PER_SESSION = 10
TIMEOUT = 15

out = threading.Lock()


def record(event):
    with out:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def stopping():
    return os.path.exists(STOP)


def token_of(lines):
    for line in lines:
        if line.startswith(b"X-Token: "):
            return line[len(b"X-Token: "):].decode()
        if line == b"":
            break
    return None


def reply(e):
    """The server's reply in a poplib.error_proto, or None when poplib
    raised it for a connection that closed or misbehaved (then it holds a
    str, not the reply's bytes)."""
    a = e.args[0] if e.args else None
    return a.decode(errors="replace") if isinstance(a, bytes) else None


# UIDLs read and kept, per user: a session does not read them again, so
# that kept messages never crowd out new ones.
kept = {}


def pop3_session(user, s):
    p = poplib.POP3(HOST, POP3_PORT, timeout=TIMEOUT)
    try:
        p.user(user)
        s["pass_sent"] = time.time()
        try:
            p.pass_(PASSWORD)
        except poplib.error_proto as e:
            if reply(e) is None:
                raise
            s["pass_err"] = reply(e)
            return
        s["pass_ok"] = time.time()
        _, listing, _ = p.uidl()
        todo = []
        for line in listing:
            number, uidl = line.split()
            if uidl not in kept.setdefault(user, set()):
                todo.append((int(number), uidl))
        for number, uidl in todo[:MAX_PER_SESSION]:
            _, lines, _ = p.retr(number)
            token = token_of(lines)
            s["retr"].append(token)
            # One in ten stays: messages that were read and kept.
            if token is None or token.endswith("7"):
                kept[user].add(uidl)
            else:
                p.dele(number)
                s["dele"].append(token)
        s["quit_sent"] = time.time()
        try:
            p.quit()
            s["quit_ok"] = time.time()
        except poplib.error_proto as e:
            if reply(e) is None:
                raise
            s["quit_err"] = reply(e)
    finally:
        p.close()


def pop3_worker(user, worker):
    while not stopping():
        s = {"kind": "pop3", "worker": worker, "user": user, "start": time.time(), "retr": [], "dele": []}
        try:
            pop3_session(user, s)
        except (OSError, EOFError, poplib.error_proto) as e:
            # No answer: the connection broke or the server went away.
            s["error"] = repr(e)
        except Exception as e:
            # A fault of this script: the test fails on it.
            s["crash"] = repr(e)
        record(s)
        time.sleep(0.02)


def lmtp_worker(worker):
    n = 0
    while not stopping():
        try:
            c = smtplib.LMTP(HOST, LMTP_PORT, timeout=TIMEOUT)
        except OSError as e:
            record({"kind": "lmtp_connect", "error": repr(e), "at": time.time()})
            time.sleep(0.1)
            continue
        try:
            while not stopping():
                token = "%d-%d" % (worker, n)
                user = USERS[n % len(USERS)]
                n += 1
                message = (
                    "From: sender@example.org\r\nTo: %s\r\nSubject: %s\r\n"
                    "X-Token: %s\r\n\r\nmessage %s\r\n" % (user, token, token, token)
                )
                d = {"kind": "lmtp", "worker": str(worker), "token": token, "user": user, "sent": time.time()}
                try:
                    c.sendmail("sender@example.org", [user], message)
                    d["ok"] = time.time()
                    record(d)
                except smtplib.SMTPResponseException as e:
                    d["code"] = e.smtp_code
                    record(d)
                    break
                except smtplib.SMTPRecipientsRefused as e:
                    d["code"] = list(e.recipients.values())[0][0]
                    record(d)
                    break
                except (OSError, smtplib.SMTPException) as e:
                    d["error"] = repr(e)
                    record(d)
                    break
                except Exception as e:
                    d["crash"] = repr(e)
                    record(d)
                    break
        finally:
            try:
                c.close()
            except OSError:
                pass
        time.sleep(0.05)


threads = [
    threading.Thread(target=pop3_worker, args=(u, "%s/%d" % (u, i)))
    for u in USERS
    for i in range(POP3_PER_USER)
]
threads += [threading.Thread(target=lmtp_worker, args=(w,)) for w in range(LMTP_CLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
