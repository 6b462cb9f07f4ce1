//! The PostgreSQL passdb takes the same paths as the passwd-file: guesses
//! counted before they are checked and answered alike for known and
//! unknown users, and SCRAM values for unknown users made up from the
//! server secret, the same on every node.

use std::sync::Arc;

use mailbag::auth::postgres::PgPassDb;
use mailbag::auth::secret::ServerSecret;
use mailbag::config::Config;

use crate::guessing::{parallel_guesses, GUESSING};
use crate::sasl::scram_first_step_at;
use crate::support::pg::{cluster, pg_store, Node};

/// A node on the database at `url`, with `secret`; it stops when dropped.
async fn node(url: &str, secret: &ServerSecret) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailbag.toml");
    std::fs::write(
        &path,
        format!(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\n\
             pool_size = 4\n[auth]\nfailure_delay_ms = 10\n{GUESSING}"
        ),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let store = pg_store(url);
    let passdb = PgPassDb::new(Arc::clone(store.pool()))
        .await
        .with_secret(secret.clone());
    Node::start(config, store, passdb).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_guesses_are_counted_first_and_answered_alike() {
    let test = "postgres_guesses_are_counted_first_and_answered_alike";
    let Some(cluster) = cluster(test) else {
        return;
    };
    let url = cluster.database("guesses").await;
    let node = node(&url, &ServerSecret::random()).await;
    let known = parallel_guesses(node.addr, "127.0.0.2", "bob", 40).await;
    let unknown = parallel_guesses(node.addr, "127.0.0.3", "nobody-here", 40).await;
    assert_eq!(known, unknown);
    assert_eq!((known.checked, known.refused), (10, 30));
    drop(node);
}

#[tokio::test]
async fn postgres_nodes_show_an_unknown_user_the_same_scram_salt() {
    let test = "postgres_nodes_show_an_unknown_user_the_same_scram_salt";
    let Some(cluster) = cluster(test) else {
        return;
    };
    let url = cluster.database("scram_salt").await;
    let dir = tempfile::tempdir().unwrap();
    let secret = ServerSecret::load_or_create(&dir.path().join("secret")).unwrap();
    let (one, two) = (node(&url, &secret).await, node(&url, &secret).await);
    let (one, two, nodes) = (one.addr, two.addr, [one, two]);
    let nobody = scram_first_step_at(one, "nobody").await;
    assert_eq!(scram_first_step_at(two, "nobody").await, nobody);
    // bob's Argon2id hash cannot serve SCRAM: he looks like anyone else.
    let bob = scram_first_step_at(one, "bob").await;
    assert_eq!(scram_first_step_at(two, "bob").await, bob);
    assert_eq!(bob.1, nobody.1);
    drop(nodes);
    // A node started later, with the secret read back from its file.
    let again = ServerSecret::load_or_create(&dir.path().join("secret")).unwrap();
    let three = node(&url, &again).await;
    assert_eq!(scram_first_step_at(three.addr, "nobody").await, nobody);
}

/// All spellings of a name in one query answer as one lookup per
/// spelling does: the stored name, none, or the letter-case conflict of
/// two rows, with names the name rule refuses never asked.
#[tokio::test]
async fn postgres_spellings_in_one_query_answer_as_one_lookup_each() {
    use mailbag::auth::PassDb;
    let test = "postgres_spellings_in_one_query_answer_as_one_lookup_each";
    let Some(cluster) = cluster(test) else {
        return;
    };
    let url = cluster.database("spellings").await;
    let store = pg_store(&url);
    store.migrate().await.unwrap();
    let db = crate::support::pg::connect(&url).await;
    for name in ["carol", "Dave@example.org", "erin", "ERIN"] {
        db.execute(
            "INSERT INTO users (name, secret) VALUES ($1, '{PLAIN}x')",
            &[&name],
        )
        .await
        .unwrap();
    }
    for case_insensitive in [true, false] {
        let passdb = PgPassDb::new(Arc::clone(store.pool()))
            .await
            .with_case_insensitive_names(case_insensitive);
        let asked: Vec<String> = [
            "carol",
            "CAROL",
            "carol@localhost",
            "dave@EXAMPLE.org",
            "Dave@example.org",
            "nobody",
            "bad\nname",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut one_each = Vec::new();
        for name in &asked {
            one_each.push(passdb.user_exists(name).await.unwrap());
        }
        assert_eq!(
            passdb.users_exist(&asked).await.unwrap(),
            one_each,
            "case_insensitive = {case_insensitive}"
        );
        // A spelling that two rows answer is an error for all of them.
        let conflicted = ["carol".to_string(), "erin".to_string()];
        let together = passdb.users_exist(&conflicted).await;
        let apart = passdb.user_exists("erin").await;
        assert_eq!(together.is_err(), apart.is_err(), "{together:?} {apart:?}");
        assert_eq!(together.is_err(), case_insensitive);
    }
}
