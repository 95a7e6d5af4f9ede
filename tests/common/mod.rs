//! Shared helpers for the integration tests: a real server on 127.0.0.1:0 with a temporary
//! data dir, on SQLite or on a throwaway PostgreSQL database, and request signing.
#![allow(dead_code)]

use std::path::PathBuf;

use nephos::auth::{api_sign, string_to_sign, SignatureAlgorithm};
use nephos::config::{Config, FileConfig, ServeArgs};
use sqlx::Connection;
use tokio::sync::oneshot;

pub const CLOUD: &str = "demo";
pub const KEY: &str = "1234567890";
pub const SECRET: &str = "abcd";

/// The metadata backends the "same story" tests run on.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

/// The value of `var`, naming a test service that `scripts/test` starts; without it the
/// tests needing the service are skipped with a warning, or fail when `require` is `1` (as
/// `.ci/run` sets it).
fn test_service(var: &str, require: &str, skipped: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var(require).as_deref() == Ok("1") {
                panic!("{require}=1 but {var} is not set");
            }
            eprintln!("WARNING: {var} is not set: {skipped}");
            None
        }
    }
}

/// The endpoint of the test S3 server, if one is configured (`NEPHOS_REQUIRE_S3=1`: required).
pub fn s3_endpoint() -> Option<String> {
    test_service(
        "NEPHOS_TEST_S3_ENDPOINT",
        "NEPHOS_REQUIRE_S3",
        "the S3 tests are SKIPPED (scripts/test starts an S3 server and sets it)",
    )
}

/// The bucket of the test S3 server that the S3 tests use.
pub const S3_BUCKET: &str = "nephos-test";

/// Points this process's AWS settings (which the servers it starts read) at `endpoint`, once:
/// the tests of one file run on parallel threads.
pub fn s3_env(endpoint: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (k, v) in [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", "nephos-test-key"),
            ("AWS_SECRET_ACCESS_KEY", "nephos-test-secret"),
            ("AWS_REGION", "us-east-1"),
        ] {
            std::env::set_var(k, v);
        }
    });
}

/// The test bucket's listing (XML) of the keys under `prefix`, read from the S3 server at
/// `endpoint` (it answers unsigned listings).
pub async fn s3_listing(endpoint: &str, prefix: &str) -> String {
    reqwest::get(format!(
        "{endpoint}/{S3_BUCKET}?list-type=2&prefix={prefix}&max-keys=1000"
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap()
}

/// The admin URL of the test PostgreSQL server, if one is configured
/// (`NEPHOS_REQUIRE_POSTGRES=1`: required).
pub fn postgres_admin_url() -> Option<String> {
    test_service(
        "NEPHOS_TEST_POSTGRES_URL",
        "NEPHOS_REQUIRE_POSTGRES",
        "the PostgreSQL variant of this test is SKIPPED \
         (scripts/test starts a throwaway server and sets it)",
    )
}

pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    if let Some(u) = postgres_admin_url() {
        v.push(Backend::Postgres(u));
    }
    v
}

/// A uniquely named database on the test server, dropped by [`PgDb::drop_db`].
pub struct PgDb {
    admin: String,
    name: String,
    pub url: String,
}

impl PgDb {
    pub async fn create(admin: &str) -> PgDb {
        let name = format!("nephos_test_{}", nephos::util::random_alnum(12));
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .expect("connect to test postgres");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
        PgDb {
            admin: admin.to_string(),
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn drop_db(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}

pub struct TestServer {
    pub base: String,
    pub data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pg: Option<PgDb>,
}

/// The default test configuration: the fixtures' account, a SHA-256 account on a second
/// cloud, and presets.
pub const DEFAULT_TOML: &str = r#"
accounts = ["cloudinary://1234567890:abcd@demo", "cloudinary://5555:sha256secret@other?signature_algorithm=sha256"]
# The tests fetch from servers they start on loopback.
allow_fetch_from = ["127.0.0.0/8", "::1/128"]

[[upload_presets]]
cloud = "demo"
name = "my_unsigned_preset"
unsigned = true
[upload_presets.settings]
folder = "preset_folder"
tags = "from_preset"

[[upload_presets]]
cloud = "demo"
name = "signed_preset"
unsigned = false
[upload_presets.settings]
tags = "signed_preset_tag"
"#;

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Backend::Sqlite, DEFAULT_TOML, None).await
    }

    /// The default configuration with extra `[limits]` lines.
    pub async fn start_with_limits(limits: &str) -> TestServer {
        let toml_text = format!("{DEFAULT_TOML}\n[limits]\n{limits}\n");
        Self::start_with(Backend::Sqlite, &toml_text, None).await
    }

    pub async fn start_on(backend: &Backend) -> TestServer {
        Self::start_with(backend.clone(), DEFAULT_TOML, None).await
    }

    pub async fn start_with(
        backend: Backend,
        toml_text: &str,
        fixed_time: Option<i64>,
    ) -> TestServer {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let file: FileConfig = toml::from_str(toml_text).expect("test config");
        let pg = match &backend {
            Backend::Sqlite => None,
            Backend::Postgres(admin) => Some(PgDb::create(admin).await),
        };
        let args = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(data_dir.path().to_path_buf()),
            database_url: pg.as_ref().map(|p| p.url.clone()),
            fixed_time,
            ..Default::default()
        };
        let config = Config::from_parts(file, &args).expect("config");
        Self::launch(config, data_dir, pg).await
    }

    pub async fn launch(
        config: Config,
        data_dir: tempfile::TempDir,
        pg: Option<PgDb>,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(nephos::serve(config, listener, async {
            let _ = rx.await;
        }));
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("{base}/health")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        TestServer {
            base,
            data_dir,
            shutdown: Some(tx),
            handle: Some(handle),
            pg,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn upload_url(&self, resource_type: &str) -> String {
        self.url(&format!("/v1_1/{CLOUD}/{resource_type}/upload"))
    }

    /// Every file under the data dir's blob folder.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p, out)
                    } else {
                        out.push(p)
                    }
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.data_dir.path().join("blobs"), &mut v);
        v
    }

    pub async fn health(&self) -> reqwest::StatusCode {
        reqwest::get(self.url("/health"))
            .await
            .expect("health")
            .status()
    }

    /// Asks the server to shut down without waiting for it (see [`TestServer::stop`]).
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        if let Some(pg) = self.pg.take() {
            pg.drop_db().await;
        }
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Signs `params` like the SDKs (version 2) and adds `signature` and `api_key`.
pub fn signed(
    params: &[(&str, &str)],
    key: &str,
    secret: &str,
    algorithm: SignatureAlgorithm,
) -> Vec<(String, String)> {
    let pairs: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Lists (`name[]` repeated) are signed as `name=a,b`, as the SDKs sign them.
    let mut to_sign: Vec<(String, String)> = Vec::new();
    for (k, v) in &pairs {
        let name = k.strip_suffix("[]").unwrap_or(k);
        match to_sign.iter_mut().find(|(n, _)| n == name) {
            Some((_, joined)) => {
                joined.push(',');
                joined.push_str(v);
            }
            None => to_sign.push((name.to_string(), v.clone())),
        }
    }
    let sig = api_sign(&string_to_sign(&to_sign, 2), secret, algorithm);
    let mut out = pairs;
    out.push(("signature".into(), sig));
    out.push(("api_key".into(), key.into()));
    out
}

/// A signed multipart upload request of `data` (demo account) with the given parameters
/// (`timestamp` is added).
pub fn signed_form(
    params: &[(&str, &str)],
    data: &[u8],
    filename: &str,
) -> reqwest::multipart::Form {
    let ts = now().to_string();
    let mut all: Vec<(&str, &str)> = params.to_vec();
    all.push(("timestamp", &ts));
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in signed(&all, KEY, SECRET, SignatureAlgorithm::Sha1) {
        form = form.text(k, v);
    }
    form.part(
        "file",
        reqwest::multipart::Part::bytes(data.to_vec()).file_name(filename.to_string()),
    )
}

/// Posts a signed upload and returns status and JSON.
pub async fn upload(
    server: &TestServer,
    rt: &str,
    params: &[(&str, &str)],
    data: &[u8],
    filename: &str,
) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(server.upload_url(rt))
        .multipart(signed_form(params, data, filename))
        .send()
        .await
        .expect("upload request");
    let status = resp.status().as_u16();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// Posts one part of a chunked upload (`Content-Range: bytes <range>`, the session's
/// `X-Unique-Upload-Id`) and returns status and JSON.
pub async fn upload_part(
    server: &TestServer,
    rt: &str,
    upload_id: &str,
    range: &str,
    form: reqwest::multipart::Form,
) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(server.upload_url(rt))
        .header("content-range", format!("bytes {range}"))
        .header("x-unique-upload-id", upload_id)
        .multipart(form)
        .send()
        .await
        .expect("part request");
    let status = resp.status().as_u16();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// The error message of an error body.
pub fn message(v: &serde_json::Value) -> String {
    v["error"]["message"].as_str().unwrap_or("").to_string()
}

pub async fn get_bytes(url: &str) -> (u16, Vec<u8>) {
    let r = reqwest::get(url).await.expect("get");
    let s = r.status().as_u16();
    (s, r.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
}

/// An Admin API call of the demo account (`path` after `/v1_1/demo/`), with a JSON body.
pub async fn admin(
    server: &TestServer,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(
            method.parse().unwrap(),
            server.url(&format!("/v1_1/{CLOUD}/{path}")),
        )
        .basic_auth(KEY, Some(SECRET));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (
        r.status().as_u16(),
        r.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// A signed Upload API call (`/v1_1/demo/<rt>/<action>`) with form fields.
pub async fn signed_call(
    server: &TestServer,
    rt: &str,
    action: &str,
    params: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let ts = now().to_string();
    let mut all: Vec<(&str, &str)> = params.to_vec();
    all.push(("timestamp", &ts));
    let r = reqwest::Client::new()
        .post(server.url(&format!("/v1_1/{CLOUD}/{rt}/{action}")))
        .form(&signed(&all, KEY, SECRET, SignatureAlgorithm::Sha1))
        .send()
        .await
        .unwrap();
    (
        r.status().as_u16(),
        r.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// A metadata store opened directly on a backend: a new SQLite file, or a new PostgreSQL
/// database that [`DirectStore::close`] drops.
pub struct DirectStore {
    pub meta: std::sync::Arc<dyn nephos::db::MetaStore>,
    pg: Option<PgDb>,
    _dir: Option<tempfile::TempDir>,
}

impl DirectStore {
    pub async fn open(backend: &Backend) -> DirectStore {
        let (url, pg, dir) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
                (url, None, Some(dir))
            }
            Backend::Postgres(admin) => {
                let db = PgDb::create(admin).await;
                (db.url.clone(), Some(db), None)
            }
        };
        DirectStore {
            meta: nephos::db::connect(&url).await.unwrap(),
            pg,
            _dir: dir,
        }
    }

    pub async fn close(self) {
        drop(self.meta);
        if let Some(db) = self.pg {
            db.drop_db().await;
        }
    }
}
