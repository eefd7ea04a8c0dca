//! The durable queue over TLS to a real PostgreSQL on this machine (`DATABASE_URL`, a
//! superuser's, as `.ci/run` gives): the test makes a CA and a server certificate, writes them
//! into the server's data directory (owned by its owner, the key 0600), turns `ssl` on with
//! `ALTER SYSTEM` and a reload, and turns it off again at the end. Plain connections keep
//! working meanwhile: the server only offers TLS.
//!
//! Checked: `sslmode=verify-full` with the right CA runs a key through the queue and every
//! connection of the handle is encrypted (`pg_stat_ssl`); a CA that did not sign the server's
//! certificate is refused at connect; a certificate that does not name the host dialled is
//! refused by `verify-full` and accepted by `verify-ca`; `prefer` with `sslrootcert` uses TLS;
//! `traceq queue stats` reads a queue over TLS.

use futures::FutureExt as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use traceq_engine::postgres::testing::TestSchema;
use traceq_engine::postgres::{tokio_postgres, PgError, PgQueue, PgQueueConfig, Settled};

/// A CA and the PEM files of a server certificate it signed.
struct Pki {
    dir: tempfile::TempDir,
    server_cert: String,
    server_key: String,
}

impl Pki {
    /// A CA (written as `ca.pem`) and a server certificate for `names`, signed by it.
    fn new(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        // Another CA, which signed nothing the server has.
        std::fs::write(dir.path().join("other-ca.pem"), self::ca().pem()).unwrap();
        Self {
            dir,
            server_cert: cert.pem(),
            server_key: key.serialize_pem(),
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// `text` as a SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Percent-encodes everything but unreserved characters, for a URL component.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The parts of `DATABASE_URL` a URL of this test is built from.
struct Target {
    user: String,
    password: Option<String>,
    host: String,
    port: u16,
    dbname: String,
}

impl Target {
    fn of(url: &str) -> Self {
        let config: tokio_postgres::Config = url.parse().expect("DATABASE_URL parses");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            other => panic!("this test needs a TCP host in DATABASE_URL, not {other:?}"),
        };
        Self {
            user: config.get_user().unwrap_or("postgres").to_owned(),
            password: config
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            dbname: config.get_dbname().unwrap_or("postgres").to_owned(),
        }
    }

    /// A URL dialling this target's address under the name `host`, with `params`.
    fn url(&self, host: &str, params: &str) -> String {
        let mut url = format!(
            "postgres://{}@{}:{}/{}?hostaddr={}&{params}",
            encode(&self.user),
            host,
            self.port,
            encode(&self.dbname),
            self.address()
        );
        if let Some(password) = &self.password {
            url.push_str(&format!("&password={}", encode(password)));
        }
        url
    }

    /// The host as an IP address (`hostaddr` takes no name).
    fn address(&self) -> String {
        if self.host == "localhost" {
            "127.0.0.1".to_owned()
        } else {
            self.host.clone()
        }
    }
}

/// Writes the server's certificate and key into its data directory (the database runs on this
/// machine, as in CI), owned by the directory's owner with mode 0600 as the server demands of a
/// key, and turns TLS on; `None` (the test skipped) when that cannot be done, outside CI. The
/// paths written.
async fn enable_tls(client: &tokio_postgres::Client, pki: &Pki) -> Option<[PathBuf; 2]> {
    let skip = |why: String| {
        if std::env::var_os("CI").is_some() {
            panic!("postgres_tls needs a local database and a superuser DATABASE_URL in CI: {why}");
        }
        println!("postgres_tls: skipped: {why}");
        None
    };
    let dir: String = match client.query_one("SHOW data_directory", &[]).await {
        Ok(row) => row.get(0),
        Err(error) => return skip(format!("cannot read data_directory ({error})")),
    };
    let dir = PathBuf::from(dir);
    let owner = match std::fs::metadata(&dir) {
        Ok(meta) => meta.uid(),
        Err(error) => {
            return skip(format!(
                "the data directory is not on this machine ({error})"
            ))
        }
    };
    let files = [
        dir.join("traceq-test-server.crt"),
        dir.join("traceq-test-server.key"),
    ];
    for (path, pem) in files.iter().zip([&pki.server_cert, &pki.server_key]) {
        let written = std::fs::write(path, pem)
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
            .and_then(|()| std::os::unix::fs::chown(path, Some(owner), None));
        if let Err(error) = written {
            return skip(format!("cannot write {} ({error})", path.display()));
        }
    }
    for statement in [
        format!(
            "ALTER SYSTEM SET ssl_cert_file = {}",
            literal(&files[0].display().to_string())
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = {}",
            literal(&files[1].display().to_string())
        ),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        client
            .batch_execute(&statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    Some(files)
}

async fn disable_tls(client: &tokio_postgres::Client) {
    for statement in [
        "ALTER SYSTEM RESET ssl",
        "ALTER SYSTEM RESET ssl_cert_file",
        "ALTER SYSTEM RESET ssl_key_file",
        "SELECT pg_reload_conf()",
    ] {
        client.batch_execute(statement).await.unwrap();
    }
}

/// Connects with `url` until the reload has taken effect (a few milliseconds; at most 10 s).
async fn connect_when_ready(config: PgQueueConfig) -> PgQueue {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match PgQueue::connect(config.clone()).await {
            Ok(q) => return q,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("no TLS connection within 10 s: {}", chain(&error)),
        }
    }
}

fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How many of the server's connections named `application` are encrypted, and how many not.
async fn encrypted(client: &tokio_postgres::Client, application: &str) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = $1",
            &[&application],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue_should_verify_the_server_over_tls() {
    let Some(db) = TestSchema::new("postgres_queue_should_verify_the_server_over_tls") else {
        return;
    };
    let admin = db.client().await.expect("connect as DATABASE_URL");
    let pki = Pki::new(&["localhost", "127.0.0.1"]);
    let Some(files) = enable_tls(&admin, &pki).await else {
        return;
    };
    let outcome = AssertUnwindSafe(checks(&db, &admin, &pki))
        .catch_unwind()
        .await;
    disable_tls(&admin).await;
    for file in files {
        let _ = std::fs::remove_file(file);
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn checks(db: &TestSchema, admin: &tokio_postgres::Client, pki: &Pki) {
    let target = Target::of(db.url());
    let ca = pki.path("ca.pem");
    let other_ca = pki.path("other-ca.pem");
    let app = db.schema().to_owned();
    let named = |app: &str, host: &str, params: String| {
        PgQueueConfig::new(target.url(host, &format!("application_name={app}&{params}")))
            .with_schema(db.schema().to_owned())
            .with_queue("tls")
    };
    let config = |host: &str, params: String| named(&app, host, params);
    let root = |path: &Path| format!("sslrootcert={}", encode(&path.display().to_string()));

    // The right CA, the name the certificate carries: a key goes through, every connection of
    // the handle encrypted.
    let q = connect_when_ready(config(
        "localhost",
        format!("sslmode=verify-full&{}", root(&ca)),
    ))
    .await;
    q.add("k").await.unwrap();
    let claim = tokio::time::timeout(Duration::from_secs(10), q.claim())
        .await
        .expect("a claim over TLS")
        .expect("the key");
    assert_eq!(claim.key, "k");
    assert_eq!(q.succeed(&claim).await.unwrap(), Settled::Finished);
    let (tls, plain) = encrypted(admin, &app).await;
    assert!(
        tls >= 3,
        "the shared, claimer and completer connections: {tls} encrypted"
    );
    assert_eq!(plain, 0, "no plain connection of the handle");
    q.shutdown().await.unwrap();

    // A CA that signed nothing of the server's: refused at connect, saying why.
    let refused = PgQueue::connect(config(
        "localhost",
        format!("sslmode=verify-full&{}", root(&other_ca)),
    ))
    .await
    .expect_err("an unknown issuer is refused");
    assert!(matches!(refused, PgError::Connect(_)), "{refused:?}");
    let why = chain(&refused);
    assert!(why.contains("certificate"), "{why}");

    // A name the certificate does not carry: verify-full refuses, verify-ca accepts.
    let wrong = "db.wrong.example";
    let refused = PgQueue::connect(config(wrong, format!("sslmode=verify-full&{}", root(&ca))))
        .await
        .expect_err("a certificate for another name is refused");
    let why = chain(&refused);
    assert!(why.contains("certificate") && why.contains("name"), "{why}");
    let q = PgQueue::connect(config(wrong, format!("sslmode=verify-ca&{}", root(&ca))))
        .await
        .unwrap_or_else(|e| panic!("verify-ca checks the chain only: {}", chain(&e)));
    assert_eq!(q.stats().await.unwrap().ready, 0);
    q.shutdown().await.unwrap();

    // prefer with a CA: TLS when the server offers it.
    let preferring = format!("{app}_prefer");
    let q = PgQueue::connect(named(
        &preferring,
        "localhost",
        format!("sslmode=prefer&{}", root(&ca)),
    ))
    .await
    .unwrap();
    q.add("p").await.unwrap();
    let (tls, plain) = encrypted(admin, &preferring).await;
    assert!(tls >= 1 && plain == 0, "prefer took TLS: {tls} / {plain}");
    q.shutdown().await.unwrap();

    // The operator's CLI over TLS.
    let url = target.url("localhost", &format!("sslmode=verify-full&{}", root(&ca)));
    let schema = db.schema().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_traceq"))
            .args(["queue", "stats", "--json", "--postgres", &url])
            .args(["--schema", &schema, "--queue", "tls"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "traceq queue stats over TLS: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["ready"], 1, "{json}");
}
