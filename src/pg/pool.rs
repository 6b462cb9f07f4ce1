//! A small pool of PostgreSQL connections: at most `size` open at once,
//! idle ones kept for reuse, broken ones dropped.
//!
//! Hand-rolled rather than a crate: it needs nothing but a semaphore and a
//! stack, and the connection string (several hosts,
//! `target_session_attrs=read-write`) is tokio-postgres's own, so a new
//! connection after a failover finds the promoted primary by itself.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, Config, NoTls};

use super::tls::RustlsConnect;
use super::PgError;

/// How long one connection attempt may take, all hosts together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections to one database.
#[derive(Debug)]
pub struct Pool {
    config: Config,
    /// Set when the connection string says `sslmode=require`.
    tls: Option<RustlsConnect>,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

/// A connection's IO task: it runs until the connection ends.
pub type Driver = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// A connection taken from the pool; returned to it on drop unless broken.
pub struct Pooled {
    client: Option<Client>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// A pool of at most `size` connections (at least one), over TLS when
    /// `tls` is given.
    pub fn new(mut config: Config, size: usize, tls: Option<RustlsConnect>) -> Arc<Pool> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        Arc::new(Pool {
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
        })
    }

    /// Connects (over TLS when the pool has it); the caller runs the
    /// returned driver.
    pub async fn open(&self) -> Result<(Client, Driver), PgError> {
        let opened = async {
            Ok::<_, tokio_postgres::Error>(match &self.tls {
                None => {
                    let (client, connection) = self.config.connect(NoTls).await?;
                    (client, Box::pin(connection) as Driver)
                }
                Some(tls) => {
                    let (client, connection) = self.config.connect(tls.clone()).await?;
                    (client, Box::pin(connection) as Driver)
                }
            })
        };
        Ok(tokio::time::timeout(CONNECT_TIMEOUT, opened)
            .await
            .map_err(|_| PgError::Timeout)??)
    }

    /// Opens a new connection outside the pool (its task is spawned).
    pub async fn connect(&self) -> Result<Client, PgError> {
        let (client, connection) = self.open().await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "database connection ended");
            }
        });
        Ok(client)
    }

    /// A connection: an idle one, or a new one while fewer than `size`
    /// are out.
    pub async fn get(self: &Arc<Self>) -> Result<Pooled, PgError> {
        let permit = tokio::time::timeout(CONNECT_TIMEOUT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| PgError::Timeout)?
            .map_err(|_| PgError::Timeout)?;
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let client = match reused {
            Some(client) => client,
            None => self.connect().await?,
        };
        Ok(Pooled {
            client: Some(client),
            pool: Arc::clone(self),
            _permit: permit,
        })
    }
}

impl Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until drop")
    }
}

impl Pooled {
    /// The connection, for a transaction (which needs `&mut`).
    pub fn client_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until drop")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // A connection that failed mid-query may sit in a broken
            // transaction state; only a healthy one goes back.
            if !client.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(client);
            }
        }
    }
}
