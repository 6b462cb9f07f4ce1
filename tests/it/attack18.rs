//! The PostgreSQL store under hostile conditions: tables changed under a
//! running node, bodies whose chunks a database administrator edited.

use crate::support::pg::*;
use crate::support::*;

/// A column's type changed under a running node (by a migration or by
/// hand) changes the result type of statements its connections keep
/// prepared: PostgreSQL then refuses every later execution of them
/// ("cached plan must not change result type"). The pool prepares the
/// statement again instead of failing every login until a restart.
#[tokio::test]
async fn a_column_type_changed_under_a_running_node_does_not_break_logins() {
    let test = "a_column_type_changed_under_a_running_node";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    f.deliver("alice", b"Subject: one\n\nhello\n").await;
    let node = f.node().await;
    // Logins prepare the maildrop's listing on the pool's connections.
    for _ in 0..3 {
        let mut c = node.login(ALICE).await;
        c.ok("QUIT").await;
    }
    let db = connect(f.url.as_deref().unwrap()).await;
    db.batch_execute("ALTER TABLE messages ALTER COLUMN uidl TYPE varchar(70)")
        .await
        .unwrap();
    for _ in 0..3 {
        let (mut c, reply) = node.try_login(ALICE).await;
        assert!(reply.starts_with("+OK"), "{reply}");
        let (_, listing) = c.multi("UIDL").await;
        assert_eq!(listing.split(|&b| b == b'\n').count(), 2, "one message");
        c.ok("QUIT").await;
    }
}
