//! The database: an embedded SQLite file by default, PostgreSQL for deployments with several
//! controller replicas. One code path serves both through sqlx's `Any` driver, so every query
//! is written once in the SQL both dialects share (`$1` placeholders, `TEXT`, `BIGINT`;
//! booleans as `BIGINT` 0/1 through [`flag`] and [`get_flag`], since the `Any` driver cannot
//! read SQLite booleans; JSON documents in `TEXT`).
//!
//! Writes are serialised. The API's validation rules span tables (flow-classifier overlap,
//! single ownership of port pairs and classifiers, lowest free group and chain ids), so a write
//! transaction first takes a lock that every other writer also takes: an in-process mutex for
//! SQLite (one file, one process) and a transaction-scoped advisory lock for PostgreSQL (several
//! replicas). Reads never take it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Key of PostgreSQL's advisory lock that serialises writers across replicas.
const WRITE_LOCK_KEY: i64 = 0x5346_435f_5752_4954; // "SFC_WRIT"

/// Migrations, portable between both backends.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL {0:?} (expected sqlite:PATH or postgres://...)")]
    Url(String),
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply the database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("cannot create the database file {0}")]
    Create(String, #[source] std::io::Error),
}

/// Which server is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The connection pool and the writers' lock.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    writer: Arc<Mutex<()>>,
}

/// A write transaction holding the writers' lock; commit or drop (rolls back).
#[derive(Debug)]
pub struct WriteTx {
    /// `Some` until `commit` or `Drop` takes it.
    tx: Option<Transaction<'static, Any>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Db {
    /// Connects and applies the migrations. `url` is `sqlite:PATH` (the file is created) or
    /// `postgres://user@host/db`.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            create_private(path).map_err(|e| DbError::Create(path.to_string(), e))?;
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(DbError::Url(url.to_string()));
        };
        let options: AnyConnectOptions = url.parse().map_err(DbError::Connect)?;
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; foreign keys are off by
                        // default in SQLite and on in PostgreSQL.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(DbError::Connect)?;
        MIGRATOR.run(&pool).await.map_err(DbError::Migrate)?;
        Ok(Db {
            pool,
            backend,
            writer: Arc::new(Mutex::new(())),
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a write transaction, after every other writer's has ended.
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        let guard = match self.backend {
            Backend::Sqlite => Some(self.writer.clone().lock_owned().await),
            Backend::Postgres => None,
        };
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
        }
        Ok(WriteTx {
            tx: Some(tx),
            guard,
        })
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl WriteTx {
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        match self.tx.take() {
            // The writers' lock (`self.guard`) is released after the commit, when `self` goes.
            Some(tx) => tx.commit().await,
            None => Ok(()),
        }
    }

    /// The connection to run queries on: `query.execute(tx.conn())`.
    #[allow(clippy::expect_used)]
    pub fn conn(&mut self) -> &mut sqlx::AnyConnection {
        // Only `commit` (which consumes `self`) and `Drop` take the transaction, so it is
        // there whenever `&mut self` can be borrowed.
        self.tx
            .as_mut()
            .expect("write transaction taken before its end")
    }
}

/// A write transaction dropped without a commit (an error returned with `?`) is rolled back,
/// and the writers' lock is released only once the rollback is done. sqlx would merely queue
/// the rollback on the connection, so the next writer could start while SQLite still held
/// this one's write lock, and fail at once with SQLITE_BUSY instead of waiting.
impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let guard = self.guard.take();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = tx.rollback().await {
                        tracing::warn!(error = %e, "rolling back a write transaction failed");
                    }
                    drop(guard);
                });
            }
            // Outside a runtime nothing else can write through this pool; dropping the
            // transaction queues its rollback as before.
            Err(_) => drop((tx, guard)),
        }
    }
}

/// Creates a missing SQLite file readable and writable by its owner only: it holds the VNF
/// instance keys. SQLite gives the `-wal` and `-shm` files the database file's mode.
fn create_private(path: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// A boolean as stored: `BIGINT` 0 or 1.
pub fn flag(b: bool) -> i64 {
    i64::from(b)
}

/// Reads a boolean column stored by [`flag`].
pub fn get_flag(row: &sqlx::any::AnyRow, column: &str) -> Result<bool, sqlx::Error> {
    use sqlx::Row;
    Ok(row.try_get::<i64, _>(column)? != 0)
}
