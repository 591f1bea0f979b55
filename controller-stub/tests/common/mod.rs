//! Test harness: a controller serving on a loopback port over a fresh database, and a small
//! client that speaks its JSON.
//!
//! Every API test runs once per backend (`api_test!`), so the same suite covers SQLite and
//! PostgreSQL. The PostgreSQL side needs no server set up beforehand: the first PostgreSQL test
//! of a test binary starts a private cluster from Debian's `postgresql` package (see
//! [`pg`]), and every test gets a database of its own in it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use controller_stub::api::AppState;
use controller_stub::auth::Auth;
use controller_stub::db::Db;
use controller_stub::CancellationToken;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

type Customize = Arc<dyn Fn(AppState) -> AppState + Send + Sync>;

/// A running controller and its database.
pub struct TestApi {
    pub base: String,
    pub addr: SocketAddr,
    pub url: String,
    client: reqwest::Client,
    auth: Auth,
    /// Applied to every server's state (drivers, quotas), across restarts too.
    customize: Customize,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestApi {
    /// A controller in noauth mode on a fresh database of `backend`.
    pub async fn start(backend: Backend) -> TestApi {
        Self::start_with_auth(
            backend,
            Auth::NoAuth {
                default_project: "admin".into(),
            },
        )
        .await
    }

    /// A controller with the given authentication on a fresh database of `backend`.
    pub async fn start_with_auth(backend: Backend, auth: Auth) -> TestApi {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = match backend {
            Backend::Sqlite => format!("sqlite:{}", dir.path().join("controller.db").display()),
            Backend::Postgres => pg::new_database().await,
        };
        Self::start_on(url, dir, auth, Arc::new(|s| s)).await
    }

    /// A noauth controller whose state `customize` adjusts (e.g. `AppState::with_drivers`).
    pub async fn start_with(
        backend: Backend,
        customize: impl Fn(AppState) -> AppState + Send + Sync + 'static,
    ) -> TestApi {
        let mut api = Self::start(backend).await;
        api.customize = Arc::new(customize);
        api.restart().await
    }

    async fn start_on(
        url: String,
        dir: tempfile::TempDir,
        auth: Auth,
        customize: Customize,
    ) -> TestApi {
        let db = Db::connect(&url).await.expect("database");
        let served_auth = auth.clone();
        let served_customize = customize.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let server = tokio::spawn(async move {
            controller_stub::serve(
                listener,
                served_customize(AppState::new(db, served_auth)),
                token,
            )
            .await
            .expect("serve");
        });
        TestApi {
            base: format!("http://{addr}"),
            addr,
            url,
            client: reqwest::Client::new(),
            auth,
            customize,
            shutdown,
            server: Some(server),
            _dir: dir,
        }
    }

    /// Stops the server and starts a new one on the same database: what a restart keeps.
    pub async fn restart(mut self) -> TestApi {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("temp dir"));
        Self::start_on(
            self.url.clone(),
            dir,
            self.auth.clone(),
            self.customize.clone(),
        )
        .await
    }

    /// One request as `project` (None: header-less, i.e. admin in noauth mode).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        project: Option<&str>,
    ) -> (StatusCode, Value) {
        match project {
            Some(p) => {
                self.request(method, path, body, &[("X-Project-Id", p)])
                    .await
            }
            None => self.request(method, path, body, &[]).await,
        }
    }

    /// One request with the given headers (e.g. `X-Auth-Token`, `X-Roles`).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body), None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body), None).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None, None).await
    }

    /// Creates `{key: body}` at `path`, asserts 201 and returns the created object.
    pub async fn create(&self, path: &str, key: &str, body: Value) -> Value {
        let (status, value) = self.post(path, serde_json::json!({ key: body })).await;
        assert_eq!(status, StatusCode::CREATED, "create {path}: {value}");
        value[key].clone()
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Asserts a Neutron error: status and exception type.
#[track_caller]
pub fn assert_error(result: &(StatusCode, Value), status: StatusCode, kind: &str) {
    assert_eq!(result.0, status, "{}", result.1);
    assert_eq!(result.1["NeutronError"]["type"], kind, "{}", result.1);
}

/// Defines one test per backend: `api_test!(name, |api| async move { ... });`
#[macro_export]
macro_rules! api_test {
    ($name:ident, |$api:ident| $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let $api = $crate::common::TestApi::start($crate::common::Backend::Sqlite).await;
                $body.await
            }

            #[tokio::test]
            async fn postgres() {
                let $api = $crate::common::TestApi::start($crate::common::Backend::Postgres).await;
                let url = $api.url.clone();
                $body.await;
                $crate::common::pg::drop_database(&url).await;
            }
        }
    };
}

/// The PostgreSQL cluster of one test binary.
///
/// The first test that asks for a database starts the cluster: `initdb` into a fresh directory
/// under the system temp dir and `postgres` listening on a UNIX socket in that directory only
/// (no TCP port, so concurrent test binaries and other PostgreSQL servers never collide). Both
/// run under a small `sh` supervisor whose standard input is a pipe that this process never
/// writes to and never closes: when the test binary exits, however it exits (libtest has no
/// global teardown; a panic, `SIGKILL` or Ctrl-C ends it all the same), the kernel closes the
/// pipe, the supervisor reads end-of-file, stops `postgres` (fast shutdown) and removes the
/// directory. The supervisor runs in its own process group so that a terminal's Ctrl-C reaches
/// only the test binary and the supervisor lives to clean up. PostgreSQL refuses to run as root,
/// so when the tests run as root the supervisor runs as the `postgres` user the Debian package
/// creates. Binaries come from `$PG_BIN` or the newest `/usr/lib/postgresql/<version>/bin`.
pub mod pg {
    use super::*;

    /// PostgreSQL names the socket after the port; with no TCP listener it is just a name.
    const PORT: u16 = 5432;

    /// The supervisor: `$1` is the cluster directory, `$2` the PostgreSQL binaries.
    const SUPERVISOR: &str = r#"
dir=$1; bin=$2
if ! "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C -N \
        >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    rm -rf "$dir"
    exit 1
fi
"$bin/postgres" -D "$dir/data" -k "$dir" -h '' -p 5432 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c max_connections=300 -c shared_buffers=32MB -c dynamic_shared_memory_type=mmap \
    -c max_parallel_workers_per_gather=0 >"$dir/postgres.log" 2>&1 &
pid=$!
cat >/dev/null
kill -INT "$pid"
wait "$pid"
rm -rf "$dir"
"#;

    struct Cluster {
        socket_dir: PathBuf,
        /// Held, never used: its pipe closing at process exit is the supervisor's signal.
        _supervisor: Child,
    }

    static CLUSTER: OnceLock<Cluster> = OnceLock::new();

    fn bin_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("PG_BIN") {
            return PathBuf::from(dir);
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("postgres").exists().then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin).expect(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): \
             run scripts/setup.sh or set PG_BIN",
        )
    }

    /// `id -u/-g postgres`, for running the cluster as that user when we are root.
    fn postgres_ids() -> (u32, u32) {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("run id");
            assert!(
                out.status.success(),
                "no `postgres` user (install the postgresql package): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("numeric id")
        };
        (id("-u"), id("-g"))
    }

    fn start_cluster() -> Cluster {
        use std::os::unix::process::CommandExt;

        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("controller-stub-pg.")
            .tempdir()
            .expect("temp dir")
            .keep();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("pg-supervisor")
            .arg(&dir)
            .arg(&bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        if rustix::process::geteuid().is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown cluster dir");
            command.uid(uid).gid(gid);
        }
        let mut child = command.spawn().expect("start the PostgreSQL supervisor");
        let pid_file = dir.join("data/postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // Line 8 of postmaster.pid is the server's state; "ready" once it accepts
            // connections.
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                if text.lines().nth(7).map(str::trim) == Some("ready") {
                    break;
                }
            }
            if let Some(status) = child.try_wait().expect("supervisor status") {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                panic!("PostgreSQL cluster setup failed ({status}): {err}");
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
                panic!("PostgreSQL did not start within 120 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Cluster {
            socket_dir: dir,
            _supervisor: child,
        }
    }

    fn url(db: &str) -> String {
        let cluster = CLUSTER.get_or_init(start_cluster);
        format!(
            "postgres://postgres@localhost:{PORT}/{db}?host={}",
            cluster.socket_dir.display()
        )
    }

    async fn admin() -> sqlx::PgConnection {
        use sqlx::Connection;
        // Starting the cluster blocks; keep it off the test's runtime threads.
        let url = tokio::task::spawn_blocking(|| url("postgres"))
            .await
            .expect("cluster start");
        sqlx::PgConnection::connect(&url)
            .await
            .expect("connect to the test cluster")
    }

    /// A new, empty database; its URL.
    pub async fn new_database() -> String {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin().await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        url(&name)
    }

    /// Drops a database made by [`new_database`] (servers still connected are cut off).
    pub async fn drop_database(url: &str) {
        let name = url
            .split('?')
            .next()
            .and_then(|path| path.rsplit_once('/'))
            .map(|(_, name)| name.to_string())
            .expect("database name in URL");
        let mut conn = admin().await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .expect("drop test database");
    }
}
