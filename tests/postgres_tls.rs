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
//! `traceq queue stats` reads a queue over TLS; a role that `pg_hba.conf` lets in by `cert`
//! authentication only (a line the test puts first and takes out again) logs in with its client
//! certificate and runs keys, and is refused without it.

use futures::FutureExt as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use traceq_engine::postgres::testing::TestSchema;
use traceq_engine::postgres::{tokio_postgres, PgError, PgQueue, PgQueueConfig, Settled};

/// The role that logs in with a client certificate (`cert` authentication, from loopback only,
/// for the test's length).
const CLIENT_ROLE: &str = "traceq_tls_test_client";

/// A CA, the PEM of a server certificate it signed, and a client certificate it signed (as
/// `client.pem` and `client.key`).
struct Pki {
    dir: tempfile::TempDir,
    ca_cert: String,
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
        // The client's certificate: `cert` authentication takes the role from its common name.
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, CLIENT_ROLE);
        let client_key = KeyPair::generate().unwrap();
        let client = params.signed_by(&client_key, &ca).unwrap();
        std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
        Self {
            dir,
            ca_cert: ca.pem(),
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
        self.url_as(&self.user, host, params)
    }

    /// [`url`](Self::url) logging in as `user`.
    fn url_as(&self, user: &str, host: &str, params: &str) -> String {
        let mut url = format!(
            "postgres://{}@{}:{}/{}?hostaddr={}&{params}",
            encode(user),
            host,
            self.port,
            encode(&self.dbname),
            self.address()
        );
        if let (Some(password), true) = (&self.password, user == self.user) {
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
async fn enable_tls(client: &tokio_postgres::Client, pki: &Pki) -> Option<[PathBuf; 3]> {
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
        dir.join("traceq-test-ca.crt"),
    ];
    for (path, pem) in files
        .iter()
        .zip([&pki.server_cert, &pki.server_key, &pki.ca_cert])
    {
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
        // The CA the server checks client certificates against.
        format!(
            "ALTER SYSTEM SET ssl_ca_file = {}",
            literal(&files[2].display().to_string())
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

/// Lets [`CLIENT_ROLE`] log in from loopback over TLS with a client certificate (`cert`
/// authentication, in front of the file's other lines) and use this test's schema; the
/// original `pg_hba.conf` and its path, to put back.
async fn allow_client_certificates(
    client: &tokio_postgres::Client,
    db: &TestSchema,
) -> (PathBuf, String) {
    let hba: String = client.query_one("SHOW hba_file", &[]).await.unwrap().get(0);
    let hba = PathBuf::from(hba);
    let original = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    let ours = format!(
        "hostssl all {CLIENT_ROLE} 127.0.0.1/32 cert\nhostssl all {CLIENT_ROLE} ::1/128 cert\n"
    );
    std::fs::write(&hba, format!("{ours}{original}")).expect("write pg_hba.conf");
    drop_client_role(client).await;
    let database: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    PgQueue::migrate(&db.config("tls"))
        .await
        .expect("the schema");
    let schema = db.schema();
    for statement in [
        format!("CREATE ROLE {CLIENT_ROLE} LOGIN"),
        format!("GRANT CREATE ON DATABASE \"{database}\" TO {CLIENT_ROLE}"),
        format!("GRANT USAGE, CREATE ON SCHEMA {schema} TO {CLIENT_ROLE}"),
        format!("GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {CLIENT_ROLE}"),
        format!("GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO {CLIENT_ROLE}"),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        client
            .batch_execute(&statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    (hba, original)
}

/// The role and its grants gone (also one an interrupted run left).
async fn drop_client_role(client: &tokio_postgres::Client) {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&CLIENT_ROLE],
        )
        .await
        .unwrap()
        .get(0);
    if exists {
        client
            .batch_execute(&format!("DROP OWNED BY {CLIENT_ROLE}"))
            .await
            .unwrap();
        client
            .batch_execute(&format!("DROP ROLE {CLIENT_ROLE}"))
            .await
            .unwrap();
    }
}

async fn disable_tls(client: &tokio_postgres::Client) {
    for statement in [
        "ALTER SYSTEM RESET ssl",
        "ALTER SYSTEM RESET ssl_cert_file",
        "ALTER SYSTEM RESET ssl_key_file",
        "ALTER SYSTEM RESET ssl_ca_file",
        "SELECT pg_reload_conf()",
    ] {
        client.batch_execute(statement).await.unwrap();
    }
}

/// Connects with `config` until the reload has taken effect (a few milliseconds; at most 10 s).
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
    let (hba, original_hba) = allow_client_certificates(&admin, &db).await;
    let outcome = AssertUnwindSafe(checks(&db, &admin, &pki))
        .catch_unwind()
        .await;
    std::fs::write(&hba, original_hba).expect("put pg_hba.conf back");
    disable_tls(&admin).await;
    drop_client_role(&admin).await;
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

    // A client certificate: the role whose only way in is `cert` authentication logs in with
    // it and runs a key, and is turned away without it.
    let as_client = |params: String| {
        PgQueueConfig::new(target.url_as(
            CLIENT_ROLE,
            "localhost",
            &format!("application_name={app}_client&{params}"),
        ))
        .with_schema(db.schema().to_owned())
        .with_queue("tls")
    };
    let verified = format!("sslmode=verify-full&{}", root(&ca));
    let certificate = format!(
        "sslcert={}&sslkey={}",
        encode(&pki.path("client.pem").display().to_string()),
        encode(&pki.path("client.key").display().to_string())
    );
    // (Retried a moment: the reload that added the `cert` line applies to new sessions soon.)
    let q = connect_when_ready(as_client(format!("{verified}&{certificate}"))).await;
    q.add("c").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let claim = tokio::time::timeout(Duration::from_secs(10), q.claim())
            .await
            .expect("a claim with a client certificate")
            .expect("a key");
        seen.push(claim.key.clone());
        q.succeed(&claim).await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, ["c", "p"]);
    q.shutdown().await.unwrap();
    let refused = PgQueue::connect(as_client(verified))
        .await
        .expect_err("no client certificate, no login");
    assert!(matches!(refused, PgError::Connect(_)), "{refused:?}");
    let why = chain(&refused);
    assert!(why.contains("certificate"), "{why}");
}
