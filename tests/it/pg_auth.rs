//! The PostgreSQL passdb takes the same paths as the passwd-file: guesses
//! counted before they are checked and answered alike for known and
//! unknown users, and SCRAM values for unknown users made up from the
//! server secret, the same on every node.

use std::net::SocketAddr;
use std::sync::Arc;

use mailbag::auth::postgres::PgPassDb;
use mailbag::auth::secret::ServerSecret;
use mailbag::config::Config;
use mailbag::server::Server;
use mailbag::store::postgres::{PgOptions, PgStore};
use tokio_util::sync::CancellationToken;

use crate::guessing::{parallel_guesses, GUESSING};
use crate::sasl::scram_first_step_at;

/// A node on the database at `url`, with `secret`; stopped when the
/// token is cancelled.
async fn node(url: &str, secret: &ServerSecret, stop: &CancellationToken) -> SocketAddr {
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
    let store = PgStore::new(&PgOptions {
        url: url.to_string(),
        pool_size: 4,
        lock_connections: 2,
        ca_file: None,
    })
    .unwrap();
    let passdb = PgPassDb::new(Arc::clone(store.pool()))
        .await
        .with_secret(secret.clone());
    let server = Server::bind(config, store, passdb).await.unwrap();
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run(stop.clone()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_guesses_are_counted_first_and_answered_alike() {
    let test = "postgres_guesses_are_counted_first_and_answered_alike";
    let Some(cluster) = crate::postgres::cluster(test) else {
        return;
    };
    let url = cluster.database("guesses").await;
    let stop = CancellationToken::new();
    let addr = node(&url, &ServerSecret::random(), &stop).await;
    let known = parallel_guesses(addr, "127.0.0.2", "bob", 40).await;
    let unknown = parallel_guesses(addr, "127.0.0.3", "nobody-here", 40).await;
    assert_eq!(known, unknown);
    assert_eq!((known.checked, known.refused), (10, 30));
    stop.cancel();
}

#[tokio::test]
async fn postgres_nodes_show_an_unknown_user_the_same_scram_salt() {
    let test = "postgres_nodes_show_an_unknown_user_the_same_scram_salt";
    let Some(cluster) = crate::postgres::cluster(test) else {
        return;
    };
    let url = cluster.database("scram_salt").await;
    let dir = tempfile::tempdir().unwrap();
    let secret = ServerSecret::load_or_create(&dir.path().join("secret")).unwrap();
    let stop = CancellationToken::new();
    let one = node(&url, &secret, &stop).await;
    let two = node(&url, &secret, &stop).await;
    let nobody = scram_first_step_at(one, "nobody").await;
    assert_eq!(scram_first_step_at(two, "nobody").await, nobody);
    // bob's Argon2id hash cannot serve SCRAM: he looks like anyone else.
    let bob = scram_first_step_at(one, "bob").await;
    assert_eq!(scram_first_step_at(two, "bob").await, bob);
    assert_eq!(bob.1, nobody.1);
    stop.cancel();
    // A node started later, with the secret read back from its file.
    let again = ServerSecret::load_or_create(&dir.path().join("secret")).unwrap();
    let stop = CancellationToken::new();
    let three = node(&url, &again, &stop).await;
    assert_eq!(scram_first_step_at(three, "nobody").await, nobody);
    stop.cancel();
}
