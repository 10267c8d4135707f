//! The PostgreSQL backend of the key-value contract: the same MVCC layer, in one table.
//!
//! The store's ordered keyspace is the table `pemba_kv (key bytea primary key, value bytea)`;
//! PostgreSQL orders `bytea` bytewise, as RocksDB orders keys, so a range scan is an indexed
//! `key >= $1 AND key < $2 ORDER BY key`. A commit is one transaction (deletes, then upserts
//! of the last value of each key); an unsynced commit sets `synchronous_commit = off`, which
//! PostgreSQL makes durable with the next synced commit (its WAL is written in order), just as
//! the contract asks. A scan reads through a cursor in a `REPEATABLE READ` transaction, so it
//! sees one state however long it takes.
//!
//! The tables are made by migrations (`pemba datastore migrate`), recorded in
//! `pemba_migrations`; opening refuses a database that is not migrated, or migrated by a newer
//! Pemba, with a message saying what to do.
//!
//! The driver (tokio-postgres, with a deadpool connection pool) is async and the contract is
//! not: the store runs the driver on a small runtime of its own, and a call waits for its
//! task's result. That works from any thread, the server's async workers included (the
//! callers' runtime is never blocked from inside: the work runs on the store's).
//!
//! Several nodes may serve one database. Each keeps its graph in memory and follows the
//! database: a thread of the store's own replays the change log of what other nodes committed,
//! every `follow_interval` or at once when a read asks for a revision it lacks. Writers take
//! turns across the nodes through one PostgreSQL advisory lock, held on a connection of its
//! own for the whole write (an import or delete by filter commits in several transactions),
//! and every commit of the write goes through that connection: a node whose session the
//! database dropped has lost the lock, and cannot commit either. Revisions are therefore the
//! database's commit order, the same on every node.

use std::future::Future;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::store::kv::{Batch, BatchOp, Kv, ScanFn};
use crate::store::mvcc::Mvcc;
use crate::store::{StoreError, StoreResult};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

/// The migrations, in order: `MIGRATIONS[i]` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &["CREATE TABLE pemba_kv (
        key bytea PRIMARY KEY,
        value bytea NOT NULL
    )"];

/// The advisory lock class a writer holds on its database and schema (an arbitrary
/// constant): one writer at a time across the nodes.
const WRITE_LOCK_CLASS: i32 = 0x7065_6d62;

/// The advisory lock class migrators take turns with.
const MIGRATE_LOCK_CLASS: i32 = 0x7065_6d63;

/// Rows a scan fetches at a time.
const SCAN_CHUNK: usize = 2000;

/// Connections in the pool.
const POOL_SIZE: usize = 16;

/// How long a connection attempt may take before the database counts as unavailable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a writer waits for another node's write to let go of the write lock.
const WRITE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long the session holding the write lock may sit idle before the database ends it
/// (letting the lock go): a node that froze in the middle of a write (a stopped process, a
/// machine that hangs) must not stop every node's writes. A live writer is never idle that
/// long: it only builds its next batch between commits.
const WRITER_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How a node follows a database other nodes write to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// how often the node looks for revisions other nodes committed
    pub follow_interval: std::time::Duration,
    /// how long a read waits for the node to catch up with a revision another node
    /// committed (an `at_least_as_fresh` token, a cursor, `fully_consistent`)
    pub revision_wait: std::time::Duration,
    /// connect over TLS, verifying the database's certificate against the CA certificates
    /// in this PEM file (see [`Tls`])
    pub tls: Tls,
}

/// How a node connects to its database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// the CA certificates (PEM) the database's certificate must chain to: with them, every
    /// connection is TLS, verified (libpq's `verify-full`); without them, as the URI's
    /// `sslmode` says, which may only be `disable` or `prefer` (no TLS is tried then)
    pub ca_cert: Option<std::path::PathBuf>,
}

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions {
            follow_interval: std::time::Duration::from_millis(100),
            revision_wait: crate::store::mvcc::DEFAULT_REVISION_WAIT,
            tls: Tls::default(),
        }
    }
}

/// An error with its causes, `outer: inner: ...` (the driver's own message often leaves out
/// what went wrong, as "error performing TLS handshake" leaves out which certificate check).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

fn db_error(e: tokio_postgres::Error) -> StoreError {
    // A closed or refused connection is the database being away: UNAVAILABLE, retry later.
    // So are the errors of a database shutting down or starting (SQLSTATE class 57, operator
    // intervention: `57P01 admin_shutdown` ends the sessions of a restart), of a lost
    // connection (class 08), and of one out of resources (class 53: too many connections).
    let away = e.code().is_some_and(|c| {
        ["08", "53", "57"]
            .iter()
            .any(|class| c.code().starts_with(class))
    });
    if e.is_closed() || e.code().is_none() || away {
        StoreError::Unavailable(format!("PostgreSQL: {}", with_causes(&e)))
    } else {
        StoreError::Engine(format!("PostgreSQL: {}", with_causes(&e)))
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL connection pool: {}", with_causes(&e)))
}

/// The PostgreSQL key-value map.
pub(crate) struct PgKv {
    pool: Pool,
    /// runs the driver; `None` only while dropping
    rt: Option<tokio::runtime::Runtime>,
    /// during a write, the connection holding the write lock, which its commits go through
    writer: std::sync::Mutex<Option<deadpool_postgres::Object>>,
}

impl std::fmt::Debug for PgKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgKv").finish_non_exhaustive()
    }
}

impl Drop for PgKv {
    fn drop(&mut self) {
        drop(
            self.writer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        // Never blocks (the store may be dropped on an async worker).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn runtime() -> StoreResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pemba-postgres")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Engine(format!("cannot start the PostgreSQL runtime: {e}")))
}

fn make_pool(uri: &str, tls: &Tls, rt: &tokio::runtime::Runtime) -> StoreResult<Pool> {
    let mut config: tokio_postgres::Config = uri
        .parse()
        .map_err(|e| StoreError::Engine(format!("bad --datastore-conn-uri: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &tls.ca_cert {
        Some(ca) => {
            // Never a silent fall back to plaintext once a CA is given.
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let connector = crate::store::postgres_tls::RustlsConnector::from_ca_file(ca)?;
            Manager::from_config(config, connector, manager_config)
        }
        None if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require => {
            return Err(StoreError::Engine(
                "sslmode=require needs --datastore-tls-ca-cert: Pemba verifies the database's \
                 certificate"
                    .into(),
            ));
        }
        None => Manager::from_config(config, NoTls, manager_config),
    };
    let _guard = rt.enter();
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Engine(format!("cannot build the connection pool: {e}")))
}

/// Runs `fut` on `rt` and waits for it, from any thread.
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = StoreResult<T>> + Send + 'static,
) -> StoreResult<T> {
    futures::executor::block_on(rt.spawn(fut))
        .map_err(|e| StoreError::Engine(format!("a PostgreSQL task failed: {e}")))?
}

/// The error of a write this node must not make: its view of the database is not the
/// database's any more. Writes stop until a restart, which loads the database afresh.
fn diverged(what: &str) -> StoreError {
    StoreError::Unwritable {
        cause: crate::store::WriteFailure::NeedsRepair,
        detail: format!("{what}; restart the server to load the database afresh"),
    }
}

/// The version the database is migrated to (0: not at all).
async fn version(client: &deadpool_postgres::Object) -> StoreResult<i32> {
    let exists = client
        .query_one("SELECT to_regclass('pemba_migrations') IS NOT NULL", &[])
        .await
        .map_err(db_error)?;
    if !exists.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM pemba_migrations",
            &[],
        )
        .await
        .map_err(db_error)?;
    Ok(row.get(0))
}

/// Applies the migrations the database at `uri` lacks; returns the versions before and after.
/// Safe to run again, and from several processes at once (they take turns).
pub fn migrate(uri: &str, tls: &Tls) -> StoreResult<(i32, i32)> {
    let rt = runtime()?;
    let pool = make_pool(uri, tls, &rt)?;
    let out = run_on(&rt, async move {
        let mut client = pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(db_error)?;
        // One migrator at a time.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
            &[&MIGRATE_LOCK_CLASS],
        )
        .await
        .map_err(db_error)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS pemba_migrations (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(db_error)?;
        let before: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM pemba_migrations",
                &[],
            )
            .await
            .map_err(db_error)?
            .get(0);
        if before > SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!(
                "the database is at schema version {before}, newer than this Pemba's \
                 {SCHEMA_VERSION}: upgrade Pemba"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(before.max(0) as usize) {
            tx.batch_execute(sql).await.map_err(db_error)?;
            let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.execute("INSERT INTO pemba_migrations (version) VALUES ($1)", &[&v])
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok((before, SCHEMA_VERSION))
    });
    rt.shutdown_background();
    out
}

impl PgKv {
    /// Connects and checks the schema version.
    pub(crate) fn open(uri: &str, tls: &Tls) -> StoreResult<PgKv> {
        let rt = runtime()?;
        let pool = make_pool(uri, tls, &rt)?;
        let p = pool.clone();
        run_on(&rt, async move {
            let client = p.get().await.map_err(pool_error)?;
            let v = version(&client).await?;
            if v == 0 {
                return Err(StoreError::Corrupt(
                    "the PostgreSQL database is not migrated: run `pemba datastore migrate \
                     --datastore-conn-uri URI` first"
                        .into(),
                ));
            }
            if v > SCHEMA_VERSION {
                return Err(StoreError::Corrupt(format!(
                    "the PostgreSQL database is at schema version {v}, newer than this \
                     Pemba's {SCHEMA_VERSION}: upgrade Pemba"
                )));
            }
            if v < SCHEMA_VERSION {
                return Err(StoreError::Corrupt(format!(
                    "the PostgreSQL database is at schema version {v}, this Pemba needs \
                     {SCHEMA_VERSION}: run `pemba datastore migrate`"
                )));
            }
            Ok(())
        })?;
        Ok(PgKv {
            pool,
            rt: Some(rt),
            writer: std::sync::Mutex::new(None),
        })
    }

    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = StoreResult<T>> + Send + 'static,
    ) -> StoreResult<T> {
        match &self.rt {
            Some(rt) => run_on(rt, fut),
            None => Err(StoreError::Engine("the PostgreSQL store is closed".into())),
        }
    }
}

impl Kv for PgKv {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        let (pool, key) = (self.pool.clone(), key.to_vec());
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt("SELECT value FROM pemba_kv WHERE key = $1", &[&key])
                .await
                .map_err(db_error)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, f: &mut ScanFn<'_>) -> StoreResult<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let (pool, start, end) = (self.pool.clone(), start.to_vec(), end.map(<[u8]>::to_vec));
        // A cursor in a repeatable-read transaction on one connection, which each chunk's task
        // takes and gives back.
        let mut client =
            Some(self.run(async move {
                let client = pool.get().await.map_err(pool_error)?;
                client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
                    .map_err(db_error)?;
                let declared =
                    match &end {
                        Some(end) => client
                            .execute(
                                "DECLARE pemba_scan NO SCROLL CURSOR FOR SELECT key, value FROM \
                             pemba_kv WHERE key >= $1 AND key < $2 ORDER BY key",
                                &[&start, end],
                            )
                            .await,
                        None => client
                            .execute(
                                "DECLARE pemba_scan NO SCROLL CURSOR FOR SELECT key, value FROM \
                             pemba_kv WHERE key >= $1 ORDER BY key",
                                &[&start],
                            )
                            .await,
                    };
                if let Err(e) = declared {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(db_error(e));
                }
                Ok(client)
            })?);
        let mut outcome = Ok(());
        'chunks: loop {
            let Some(c) = client.take() else { break };
            let fetched = self.run(async move {
                let rows = c
                    .query(&format!("FETCH {SCAN_CHUNK} FROM pemba_scan"), &[])
                    .await;
                match rows {
                    Ok(rows) => Ok((c, Ok(rows))),
                    Err(e) => Ok((c, Err(db_error(e)))),
                }
            });
            let (c, rows) = fetched?;
            client = Some(c);
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            };
            let n = rows.len();
            for row in rows {
                let (k, v): (&[u8], &[u8]) = (row.get(0), row.get(1));
                match f(k, v) {
                    Ok(true) => {}
                    Ok(false) => break 'chunks,
                    Err(e) => {
                        outcome = Err(e);
                        break 'chunks;
                    }
                }
            }
            if n < SCAN_CHUNK {
                break;
            }
        }
        if let Some(c) = client {
            // Ends the transaction (and the cursor) before the connection goes back.
            self.run(async move {
                c.batch_execute("ROLLBACK").await.map_err(db_error)?;
                Ok(())
            })?;
        }
        outcome
    }

    fn commit(&self, batch: Batch) -> StoreResult<()> {
        self.write(batch, true)
    }

    fn commit_unsynced(&self, batch: Batch) -> StoreResult<()> {
        self.write(batch, false)
    }

    fn shared(&self) -> bool {
        true
    }

    fn lock_writers(&self) -> StoreResult<()> {
        let pool = self.pool.clone();
        let client = self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let limits = format!(
                "SET lock_timeout = {}; SET idle_session_timeout = {}",
                WRITE_LOCK_WAIT.as_millis(),
                WRITER_IDLE_LIMIT.as_millis()
            );
            client.batch_execute(&limits).await.map_err(db_error)?;
            let locked = client
                .execute(
                    "SELECT pg_advisory_lock($1, hashtext(current_schema()))",
                    &[&WRITE_LOCK_CLASS],
                )
                .await;
            match locked {
                Ok(_) => Ok(client),
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                {
                    Err(StoreError::Unavailable(format!(
                        "another node's write held the write lock for more than {WRITE_LOCK_WAIT:?}"
                    )))
                }
                Err(e) => Err(db_error(e)),
            }
        })?;
        *self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(client);
        Ok(())
    }

    fn unlock_writers(&self) {
        let Some(client) = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let unlocked = self.run(async move {
            // One round trip: the unlock, and the session back to no idle limit for the pool.
            let unlocked = client
                .batch_execute(&format!(
                    "SELECT pg_advisory_unlock({WRITE_LOCK_CLASS}, hashtext(current_schema())); \
                     SET idle_session_timeout = 0"
                ))
                .await;
            if unlocked.is_err() {
                // Closing the session is what lets the lock go, whatever state it is in.
                drop(deadpool_postgres::Object::take(client));
            }
            Ok(unlocked.is_ok())
        });
        if !matches!(unlocked, Ok(true)) {
            tracing::debug!("the write lock's session was closed instead of unlocked");
        }
    }
}

impl PgKv {
    /// Applies `batch` in one transaction: only each key's last operation matters, so the
    /// deletes go in one statement and the puts in another (two round trips whatever the
    /// size).
    fn write(&self, batch: Batch, sync: bool) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut last: std::collections::HashMap<Vec<u8>, Option<Vec<u8>>> =
            std::collections::HashMap::with_capacity(batch.len());
        for op in batch.ops {
            match op {
                BatchOp::Put(k, v) => last.insert(k, Some(v)),
                BatchOp::Delete(k) => last.insert(k, None),
            };
        }
        let (mut put_keys, mut put_values, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in last {
            match v {
                Some(v) => {
                    put_keys.push(k);
                    put_values.push(v);
                }
                None => deletes.push(k),
            }
        }
        // A batch that moves the head must move it from the head this node knows: if the
        // database's differs (a commit whose acknowledgement was lost), committing would give
        // two meanings to one revision.
        let head_key = crate::store::encoding::meta_key(crate::store::encoding::META_HEAD);
        let new_head = put_keys
            .iter()
            .zip(&put_values)
            .find(|(k, _)| **k == head_key)
            .and_then(|(_, v)| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes);
        // In a write, its commits go through the session holding the write lock.
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let in_write = writer.is_some();
        let pool = self.pool.clone();
        let (writer, result) = self.run(async move {
            let mut client = match writer {
                Some(c) => c,
                None => match pool.get().await {
                    Ok(c) => c,
                    Err(e) => return Ok((None, Err(pool_error(e)))),
                },
            };
            let result = commit_batch(
                &mut client,
                head_key,
                new_head,
                sync,
                deletes,
                put_keys,
                put_values,
            )
            .await;
            Ok((in_write.then_some(client), result))
        })?;
        if let Some(w) = writer {
            *self
                .writer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(w);
        }
        result
    }
}

/// Commits one batch on `client`, in one transaction, guarding the head (see [`PgKv::write`]).
async fn commit_batch(
    client: &mut deadpool_postgres::Object,
    head_key: Vec<u8>,
    new_head: Option<u64>,
    sync: bool,
    deletes: Vec<Vec<u8>>,
    put_keys: Vec<Vec<u8>>,
    put_values: Vec<Vec<u8>>,
) -> StoreResult<()> {
    let tx = client.transaction().await.map_err(db_error)?;
    if let Some(new_head) = new_head {
        let stored = tx
            .query_opt(
                "SELECT value FROM pemba_kv WHERE key = $1 FOR UPDATE",
                &[&head_key],
            )
            .await
            .map_err(db_error)?
            .and_then(|r| <[u8; 8]>::try_from(r.get::<_, &[u8]>(0)).ok())
            .map(u64::from_be_bytes);
        let expected = new_head.checked_sub(1);
        if stored != expected {
            return Err(diverged(&format!(
                "the database's head revision is {stored:?}, this node expected {expected:?}"
            )));
        }
    }
    if !sync {
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await
            .map_err(db_error)?;
    }
    if !deletes.is_empty() {
        tx.execute("DELETE FROM pemba_kv WHERE key = ANY($1)", &[&deletes])
            .await
            .map_err(db_error)?;
    }
    if !put_keys.is_empty() {
        tx.execute(
            "INSERT INTO pemba_kv (key, value) SELECT * FROM unnest($1::bytea[], \
             $2::bytea[]) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&put_keys, &put_values],
        )
        .await
        .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)
}

/// A [`Datastore`](crate::store::Datastore) in a PostgreSQL database (migrated with
/// [`migrate`]), which several nodes may serve at once.
#[derive(Debug)]
pub struct PostgresStore {
    /// the shared MVCC layer over the database (its follower thread holds a weak reference)
    pub(crate) inner: std::sync::Arc<Mvcc<PgKv>>,
}

impl PostgresStore {
    /// Connects to the database at `uri` (a `postgres://` URI or key=value string), loads
    /// the store in it and starts following it, with the default [`PostgresOptions`]. Fails
    /// with [`StoreError::Corrupt`] if the database is not migrated (or migrated by a newer
    /// Pemba), [`StoreError::Unavailable`] if it cannot be reached.
    pub fn open(uri: &str) -> StoreResult<PostgresStore> {
        PostgresStore::open_with(uri, PostgresOptions::default())
    }

    /// [`PostgresStore::open`] with `options`.
    pub fn open_with(uri: &str, options: PostgresOptions) -> StoreResult<PostgresStore> {
        let kv = PgKv::open(uri, &options.tls)?;
        let mut mvcc = Mvcc::open(kv)?;
        mvcc.set_revision_wait(options.revision_wait);
        let inner = std::sync::Arc::new(mvcc);
        let weak = std::sync::Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("pemba-follower".into())
            .spawn(move || Mvcc::follow(&weak, options.follow_interval))
            .map_err(|e| StoreError::Engine(format!("cannot start the follower thread: {e}")))?;
        Ok(PostgresStore { inner })
    }
}

crate::store::mvcc::delegate_datastore!(PostgresStore);

/// For tests: the URI of a new, empty schema in the database `PEMBA_TEST_POSTGRES_URL` names
/// (`.ci/run` starts a private PostgreSQL and sets it). Without one, `None` (after saying the
/// test skipped), unless `PEMBA_REQUIRE_POSTGRES` is set (as `.ci/run` sets it): then it
/// panics, so the test fails.
#[doc(hidden)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "a test fixture")]
pub fn test_schema_uri() -> Option<String> {
    let Some(base) = std::env::var("PEMBA_TEST_POSTGRES_URL").ok() else {
        assert!(
            std::env::var_os("PEMBA_REQUIRE_POSTGRES").is_none(),
            "PEMBA_REQUIRE_POSTGRES is set but PEMBA_TEST_POSTGRES_URL is not"
        );
        eprintln!("skipped: no PostgreSQL (set PEMBA_TEST_POSTGRES_URL, as .ci/run does)");
        return None;
    };
    let schema = format!("t{:016x}", rand::random::<u64>());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        drop(client);
        let _ = conn.await;
    });
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-csearch_path%3D{schema}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Timestamp, parse_relationship};
    use crate::store::{Datastore, RelationshipUpdate, UpdateOp};

    fn touch(store: &PostgresStore, text: &str) -> StoreResult<crate::model::Revision> {
        store.write_relationships(
            &[],
            &[RelationshipUpdate {
                op: UpdateOp::Touch,
                relationship: parse_relationship(text).unwrap(),
            }],
            Timestamp::now(),
        )
    }

    /// Runs SQL on a connection of its own to the store's schema.
    fn sql<T: Send + 'static>(
        uri: &str,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> T + Send + 'static,
    ) -> T {
        let uri = uri.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&uri, NoTls).await.unwrap();
            tokio::spawn(conn);
            f(&client).await
        })
    }

    /// A head that moved in the database without its change log (a database tampered with)
    /// stops the node's writes instead of writing a revision twice.
    #[test]
    fn a_head_moved_under_the_node_stops_its_writes() {
        let Some(uri) = test_schema_uri() else { return };
        migrate(&uri, &Tls::default()).unwrap();
        let store = PostgresStore::open(&uri).unwrap();
        let rev = touch(&store, "document:a#viewer@user:ann").unwrap();
        let key = crate::store::encoding::meta_key(crate::store::encoding::META_HEAD);
        let bumped = (rev.0 + 1).to_be_bytes().to_vec();
        sql(&uri, async move |c| {
            c.execute(
                "UPDATE pemba_kv SET value = $1 WHERE key = $2",
                &[&bumped, &key],
            )
            .await
            .unwrap()
        });
        let refused = touch(&store, "document:b#viewer@user:ann");
        assert!(
            matches!(refused, Err(StoreError::Corrupt(_))),
            "{refused:?}"
        );
        assert_eq!(store.head_revision().unwrap(), rev);
    }

    /// With a CA, every connection is TLS and verified: the database `.ci/postgres` starts
    /// (its certificate signed by `PEMBA_TEST_POSTGRES_CA`) is reached, one with a
    /// certificate from another CA is refused, and `sslmode=require` without a CA is refused
    /// with what to do.
    #[test]
    fn tls_to_the_database_is_verified() {
        let Some(uri) = test_schema_uri() else { return };
        let Some(ca) = std::env::var_os("PEMBA_TEST_POSTGRES_CA") else {
            assert!(std::env::var_os("PEMBA_REQUIRE_POSTGRES").is_none());
            eprintln!("skipped: no PEMBA_TEST_POSTGRES_CA (as .ci/run sets it)");
            return;
        };
        let tls = Tls {
            ca_cert: Some(ca.into()),
        };
        migrate(&uri, &tls).unwrap();
        let kv = PgKv::open(&uri, &tls).unwrap();
        let pool = kv.pool.clone();
        let (ssl, version) = kv
            .run(async move {
                let c = pool.get().await.map_err(pool_error)?;
                let row = c
                    .query_one(
                        "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await
                    .map_err(db_error)?;
                Ok((row.get::<_, bool>(0), row.get::<_, Option<String>>(1)))
            })
            .unwrap();
        assert!(ssl, "the connection is not TLS");
        assert!(version.is_some_and(|v| v.starts_with("TLSv1.")));

        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other-ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&other, params.self_signed(&key).unwrap().pem()).unwrap();
        let refused = PostgresStore::open_with(
            &uri,
            PostgresOptions {
                tls: Tls {
                    ca_cert: Some(other),
                },
                ..PostgresOptions::default()
            },
        )
        .unwrap_err();
        assert!(refused.to_string().contains("certificate"), "{refused}");

        let sep = if uri.contains('?') { '&' } else { '?' };
        let required = format!("{uri}{sep}sslmode=require");
        let refused = PostgresStore::open(&required).unwrap_err();
        assert!(
            refused.to_string().contains("--datastore-tls-ca-cert"),
            "{refused}"
        );
    }

    /// The write lock is held by one session, which the database ends if it idles (a frozen
    /// writer), and let go by `unlock_writers`.
    #[test]
    fn the_write_lock_is_one_session_with_an_idle_limit() {
        let Some(uri) = test_schema_uri() else { return };
        migrate(&uri, &Tls::default()).unwrap();
        let kv = PgKv::open(&uri, &Tls::default()).unwrap();
        kv.lock_writers().unwrap();
        assert_eq!(write_lock_holders(&uri), 1);
        let writer = kv.writer.lock().unwrap().take().unwrap();
        let (writer, idle) = kv
            .run(async move {
                let row = writer
                    .query_one("SHOW idle_session_timeout", &[])
                    .await
                    .map_err(db_error)?;
                let idle: String = row.get(0);
                Ok((writer, idle))
            })
            .unwrap();
        assert_eq!(idle, "1min");
        *kv.writer.lock().unwrap() = Some(writer);
        kv.unlock_writers();
        assert_eq!(write_lock_holders(&uri), 0);
    }

    /// How many sessions hold the write lock of the store's schema.
    fn write_lock_holders(uri: &str) -> i64 {
        sql(uri, async |c| {
            c.query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND classid = $1::int::oid AND objid = hashtext(current_schema())::oid",
                &[&WRITE_LOCK_CLASS],
            )
            .await
            .unwrap()
            .get(0)
        })
    }

    /// Two nodes on one database: a write on either is seen on the other once it asks for
    /// the revision; two creates of one tuple at once give one `AlreadyExists`; the write
    /// lock is let go after each write.
    #[test]
    fn two_nodes_share_one_database() {
        let Some(uri) = test_schema_uri() else { return };
        migrate(&uri, &Tls::default()).unwrap();
        let a = PostgresStore::open(&uri).unwrap();
        let b = PostgresStore::open(&uri).unwrap();
        assert_eq!(a.unique_id(), b.unique_id());
        let r1 = touch(&a, "document:a#viewer@user:ann").unwrap();
        assert_eq!(b.refresh(Some(r1)).unwrap(), r1);
        let page = b
            .query(
                r1,
                &crate::model::RelationshipFilter::default(),
                None,
                10,
                Timestamp::now(),
            )
            .unwrap();
        assert_eq!(page.relationships.len(), 1);
        let s2 = b
            .write_schema("definition user {}", &[], Timestamp::now())
            .unwrap();
        assert_eq!(a.refresh(None).unwrap(), s2);
        assert_eq!(
            a.read_schema(s2).unwrap().unwrap().text,
            "definition user {}"
        );

        let create = |store: &PostgresStore| {
            store.write_relationships(
                &[],
                &[RelationshipUpdate {
                    op: UpdateOp::Create,
                    relationship: parse_relationship("document:b#viewer@user:bob").unwrap(),
                }],
                Timestamp::now(),
            )
        };
        let (ra, rb) = std::thread::scope(|s| {
            let x = s.spawn(|| create(&a));
            let y = s.spawn(|| create(&b));
            (x.join().unwrap(), y.join().unwrap())
        });
        assert!(ra.is_ok() != rb.is_ok(), "{ra:?} {rb:?}");
        assert!(matches!(
            ra.as_ref().err().or(rb.as_ref().err()),
            Some(StoreError::AlreadyExists(_))
        ));
        assert_eq!(
            write_lock_holders(&uri),
            0,
            "the write lock is let go after each write"
        );
    }
}
