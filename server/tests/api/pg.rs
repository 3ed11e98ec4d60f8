//! A fresh Postgres database per test, dropped afterwards.
//!
//! The server that `CAIRN_TEST_POSTGRES` names (default: the local one, trust auth) must be
//! running: `scripts/test.sh` starts it. Each test creates a database of its own, so tests
//! run in parallel without seeing each other, and drops it (with any connection still open)
//! when it ends, failed or not.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
};

use sqlx::{Connection, PgConnection};

/// The server's maintenance database, where test databases are created.
pub(crate) fn admin_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database that lives as long as this value.
pub struct TestDb {
    /// The database's URL, for [`server::store::Store::connect`] or `cairn serve`.
    pub url: String,
    name: String,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn new() -> Self {
        let admin = admin_url();
        let name = format!("cairn_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach Postgres at {admin} ({e}); start it (pg_ctlcluster 15 main start) \
                 or point CAIRN_TEST_POSTGRES at one"
            )
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("creating a test database");
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// A direct connection to the test database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connecting")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime's reach: a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            })
        })
        .join();
    }
}

/// A TCP relay in front of a test database that counts each connection's round trips and
/// can lose one answer: armed, it passes the next `COMMIT` on to Postgres, which commits, and
/// then drops the connection instead of relaying the answer, as a network failing at that
/// moment would. The client cannot tell whether its transaction committed.
pub struct Relay {
    /// The database's URL through the relay (unencrypted, so that it can read the protocol).
    pub url: String,
    armed: Arc<AtomicBool>,
    /// Per connection, in the order they were made: what its client asked for.
    counts: Arc<Mutex<Vec<Arc<Counts>>>>,
}

/// What one connection's client asked for so far.
#[derive(Default)]
struct Counts {
    round_trips: AtomicU64,
    commits: AtomicU64,
}

impl Relay {
    /// Relays connections to the server `db` is on.
    pub async fn start(db: &TestDb) -> Self {
        let (scheme, rest) = db.url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').expect("a database name");
        let (user, server) = authority.rsplit_once('@').expect("a user");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "{scheme}://{user}@{}/{path}?sslmode=disable",
            listener.local_addr().unwrap()
        );
        let armed = Arc::new(AtomicBool::new(false));
        let counts: Arc<Mutex<Vec<Arc<Counts>>>> = Arc::default();
        let server = server.to_string();
        let (relay_armed, counters) = (armed.clone(), counts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(&server).await else {
                    continue;
                };
                let count = Arc::new(Counts::default());
                counters.lock().unwrap().push(count.clone());
                tokio::spawn(relay(client, upstream, relay_armed.clone(), count));
            }
        });
        Self { url, armed, counts }
    }

    /// Loses the answer to the next `COMMIT` that any connection sends.
    pub fn lose_next_commit_answer(&self) {
        self.armed.store(true, SeqCst);
    }

    /// Per connection: the round trips its client has asked for so far, and its `COMMIT`s.
    pub fn counts(&self) -> Vec<(u64, u64)> {
        let counters = self.counts.lock().unwrap();
        counters
            .iter()
            .map(|c| (c.round_trips.load(SeqCst), c.commits.load(SeqCst)))
            .collect()
    }
}

/// Reads the messages a client sends, as they cross the relay in pieces of any size: after
/// the start-up message (length, then body), each is a type byte, a length and a body. A
/// round trip ends with `Sync` (the extended protocol sqlx uses for statements) or a simple
/// `Query` (as sqlx sends `BEGIN` and `COMMIT`): the client then waits for the answer. The
/// relay's URL disables TLS, so the first message is the start-up message itself (never an
/// `SSLRequest`).
#[derive(Default)]
struct ClientMessages {
    started: bool,
    header: Vec<u8>,
    body_left: usize,
}

impl ClientMessages {
    /// Takes in `bytes`; returns how many round trips they end.
    fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut ends = 0;
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let header_len = if self.started { 5 } else { 4 };
            let n = (header_len - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == header_len {
                let len = &self.header[header_len - 4..];
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                if self.started && matches!(self.header[0], b'S' | b'Q') {
                    ends += 1;
                }
                self.started = true;
                self.body_left = len - 4;
                self.header.clear();
            }
        }
        ends
    }
}

async fn relay(
    client: tokio::net::TcpStream,
    upstream: tokio::net::TcpStream,
    armed: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = upstream.into_split();
    let losing = AtomicBool::new(false);
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut messages = ClientMessages::default();
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            counts
                .round_trips
                .fetch_add(messages.feed(&buf[..n]), SeqCst);
            // A simple-protocol `COMMIT` (sqlx ends transactions so): 'Q', length, text, NUL.
            if buf[..n].windows(7).any(|w| w == b"COMMIT\0") {
                counts.commits.fetch_add(1, SeqCst);
                if armed.swap(false, SeqCst) {
                    losing.store(true, SeqCst);
                }
            }
            if to_server.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if losing.load(SeqCst) {
                // The server answered the COMMIT, so it committed: the answer goes nowhere.
                return;
            }
            if to_client.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// A PostgreSQL cluster of a test's own (Debian's binaries, a data directory in a temporary
/// folder, a free port), for what must not disturb the shared server: restarting it. As root
/// it runs as the `postgres` user, as Debian's clusters do. Stopped when dropped.
pub struct OwnCluster {
    /// Its `postgres` database.
    pub url: String,
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl OwnCluster {
    pub fn start() -> Self {
        let versions = std::fs::read_dir("/usr/lib/postgresql").expect(
            "PostgreSQL's binaries in /usr/lib/postgresql (scripts/postgres.sh installs them)",
        );
        // The newest (by major version: 9.6 is older than 15).
        let bin = versions
            .filter_map(|v| v.ok())
            .filter_map(|v| {
                let major: f64 = v.file_name().to_str()?.parse().ok()?;
                let bin = v.path().join("bin");
                bin.join("pg_ctl").exists().then_some((major, bin))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .expect("a PostgreSQL with pg_ctl")
            .1;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            data,
            dir,
        };
        if nix::unistd::geteuid().is_root() {
            let chown = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(cluster.dir.path())
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let data = cluster.data.display().to_string();
        let initdb = ["-A", "trust", "-U", "postgres", "--no-sync", "-D", &data];
        cluster.run("initdb", &initdb);
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            cluster.dir.path().display()
        );
        cluster.pg_ctl(&["-o", &options], "start");
        cluster
    }

    /// Restarts it (fast: connections are cut, the server stops and starts again).
    pub fn restart(&self) {
        self.pg_ctl(&["-m", "fast"], "restart");
    }

    /// `pg_ctl`, waiting for it; the server it starts writes to a log file, never to the
    /// pipes `pg_ctl`'s output is read from (they would stay open as long as it runs).
    fn pg_ctl(&self, args: &[&str], action: &str) {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let log = self.dir.path().join("log").display().to_string();
        all.extend(["-l".into(), log, "-w".into(), "-D".into()]);
        all.push(self.data.display().to_string());
        all.push(action.into());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.run("pg_ctl", &all);
    }

    /// `program` of PostgreSQL's, as the user that owns the cluster.
    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        if nix::unistd::geteuid().is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-w", "-D", &data, "stop"])
            .output();
    }
}
