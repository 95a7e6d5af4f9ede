//! Chunked uploads: order, retries, conflicts, limits, expiry, a SIGKILL in the middle, and two
//! processes sharing one PostgreSQL database and one data dir.

mod common;

use common::*;
use md5_ref::{Digest, Md5};
use nephos::auth::SignatureAlgorithm;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

const MIB: usize = 1024 * 1024;

/// Deterministic, non-repeating bytes.
fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u32 = 0x9E37_79B9 ^ seed as u32;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

struct Part_<'a> {
    base: &'a str,
    rt: &'a str,
    upload_id: Option<&'a str>,
    start: usize,
    end: usize,
    total: Option<usize>,
    params: Vec<(&'a str, String)>,
    key: (&'a str, &'a str),
}

impl<'a> Part_<'a> {
    fn new(
        base: &'a str,
        upload_id: &'a str,
        start: usize,
        end: usize,
        total: Option<usize>,
    ) -> Self {
        Part_ {
            base,
            rt: "raw",
            upload_id: Some(upload_id),
            start,
            end,
            total,
            params: Vec::new(),
            key: (KEY, SECRET),
        }
    }

    async fn send(&self, file: &[u8]) -> (u16, Value) {
        let ts = now().to_string();
        let mut pairs: Vec<(&str, &str)> =
            self.params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        pairs.push(("timestamp", &ts));
        let mut form = Form::new();
        for (k, v) in signed(&pairs, self.key.0, self.key.1, SignatureAlgorithm::Sha1) {
            form = form.text(k, v);
        }
        let bytes = file[self.start..=self.end.min(file.len() - 1)].to_vec();
        form = form.part("file", Part::bytes(bytes).file_name("big.bin"));
        let total = self
            .total
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-1".into());
        let mut req = reqwest::Client::new()
            .post(format!("{}/v1_1/{CLOUD}/{}/upload", self.base, self.rt))
            .header(
                "content-range",
                format!("bytes {}-{}/{total}", self.start, self.end),
            )
            .multipart(form);
        if let Some(id) = self.upload_id {
            req = req.header("x-unique-upload-id", id);
        }
        let resp = req.send().await.expect("part request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

async fn assert_stored(r: &Value, file: &[u8]) {
    assert_eq!(r["done"], true, "{r}");
    assert_eq!(r["bytes"].as_u64(), Some(file.len() as u64), "{r}");
    assert_eq!(r["etag"], md5_hex(file), "{r}");
    let (s, got) = get_bytes(r["secure_url"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert!(got == file, "downloaded bytes differ");
}

#[tokio::test]
async fn in_order_parts_complete_with_the_final_part() {
    let server = TestServer::start().await;
    let file = data(16 * MIB + 123, 1);
    let t = file.len();
    let b = &server.base;
    let mut p = Part_::new(b, "inorder1", 0, 5 * MIB - 1, None);
    p.params.push(("public_id", "big/file.bin".into()));
    let (s, r) = p.send(&file).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        r,
        serde_json::json!({"done": false, "bytes": 5 * MIB, "public_id": "big/file.bin", "resource_type": "raw", "kind": "upload"})
    );
    p.start = 5 * MIB;
    p.end = 10 * MIB - 1;
    assert_eq!(
        p.send(&file).await.1["bytes"].as_u64(),
        Some(10 * MIB as u64)
    );
    p.start = 10 * MIB;
    p.end = t - 1;
    p.total = Some(t);
    let (s, r) = p.send(&file).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["public_id"], "big/file.bin");
    assert_stored(&r, &file).await;
    // The session is gone: its files were removed.
    let chunks = server.data_dir.path().join("chunks");
    assert_eq!(
        std::fs::read_dir(&chunks).map(|d| d.count()).unwrap_or(0),
        0
    );
    server.stop().await;
}

#[tokio::test]
async fn out_of_order_parallel_and_duplicated_parts() {
    let server = TestServer::start().await;
    let file = data(26 * MIB + 7, 2);
    let t = file.len();
    let b = server.base.clone();
    let ranges: Vec<(usize, usize)> = (0..5)
        .map(|i| (i * 5 * MIB, (i + 1) * 5 * MIB - 1))
        .collect();
    // The final part first: the upload is not complete yet.
    let fin = Part_::new(&b, "ooo", 25 * MIB, t - 1, Some(t));
    let (s, r) = fin.send(&file).await;
    assert_eq!((s, r["done"].as_bool()), (200, Some(false)), "{r}");
    // Middle parts in parallel, in reverse order.
    let mut tasks = Vec::new();
    for &(start, end) in ranges.iter().skip(1).rev() {
        let (b, f) = (b.clone(), file.clone());
        tasks.push(tokio::spawn(async move {
            Part_::new(&b, "ooo", start, end, None).send(&f).await
        }));
    }
    for task in tasks {
        let (s, r) = task.await.unwrap();
        assert_eq!((s, r["done"].as_bool()), (200, Some(false)), "{r}");
    }
    // A re-sent part is accepted and changes nothing.
    let (s, r) = Part_::new(&b, "ooo", ranges[2].0, ranges[2].1, None)
        .send(&file)
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["bytes"].as_u64(), Some((t - 5 * MIB) as u64));
    // The first part completes it, last of all.
    let (s, r) = Part_::new(&b, "ooo", 0, 5 * MIB - 1, Some(t))
        .send(&file)
        .await;
    assert_eq!(s, 200, "{r}");
    assert_stored(&r, &file).await;
    // The random public ID of a raw upload keeps the file's extension.
    assert!(r["public_id"].as_str().unwrap().ends_with(".bin"), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn refused_parts_have_exact_messages() {
    let server = TestServer::start().await;
    let file = data(12 * MIB, 3);
    let other = data(12 * MIB, 4);
    let t = file.len();
    let b = &server.base;
    assert_eq!(
        Part_::new(b, "bad", 0, 5 * MIB - 1, Some(t))
            .send(&file)
            .await
            .0,
        200
    );

    // A part that overlaps with different bytes.
    let (s, r) = Part_::new(b, "bad", 4 * MIB, 9 * MIB - 1, Some(t))
        .send(&other)
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        message(&r),
        format!(
            "Part bytes {}-{} overlaps bytes 0-{} received earlier with different content",
            4 * MIB,
            9 * MIB - 1,
            5 * MIB - 1
        )
    );
    // The same range with other bytes.
    let (s, r) = Part_::new(b, "bad", 0, 5 * MIB - 1, Some(t))
        .send(&other)
        .await;
    assert_eq!(s, 400);
    assert!(
        message(&r).starts_with("Part bytes 0-5242879 overlaps bytes 0-5242879"),
        "{r}"
    );
    // An overlap with the same bytes is fine.
    let (s, r) = Part_::new(b, "bad", 4 * MIB, 9 * MIB - 1, Some(t))
        .send(&file)
        .await;
    assert_eq!((s, r["bytes"].as_u64()), (200, Some(9 * MIB as u64)), "{r}");
    // A short part that is not the last.
    let (s, r) = Part_::new(b, "bad", 9 * MIB, 10 * MIB - 1, Some(t))
        .send(&file)
        .await;
    assert_eq!(
        (s, message(&r).as_str()),
        (400, "All parts except EOF-chunk must be larger than 5mb")
    );
    // A total that changes.
    let (s, r) = Part_::new(b, "bad", 9 * MIB, 14 * MIB - 1, Some(20 * MIB))
        .send(&data(20 * MIB, 3))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        message(&r),
        format!(
            "Inconsistent total size in Content-Range: the upload is {t} bytes, this part says {}",
            20 * MIB
        )
    );
    // A part whose length disagrees with its range.
    let mut p = Part_::new(b, "bad", 9 * MIB, t - 1, Some(t));
    p.end = t + 10;
    let (s, r) = p.send(&file).await;
    assert_eq!(s, 400);
    assert_eq!(
        message(&r),
        format!(
            "Invalid Content-Range header - bytes {}-{}: the part has {} bytes",
            9 * MIB,
            t + 10,
            t - 9 * MIB
        )
    );
    // Options are checked on the first part, not after the last.
    let mut p = Part_::new(b, "bad3", 0, 5 * MIB - 1, Some(t));
    p.params.push(("type", "fetch".into()));
    let (s, r) = p.send(&file).await;
    assert_eq!(
        (s, message(&r).as_str()),
        (
            400,
            "Invalid type fetch: must be one of upload, private, authenticated"
        )
    );
    // A range past the total.
    let (s, r) = Part_::new(b, "bad2", 0, 5 * MIB - 1, Some(100))
        .send(&file)
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        message(&r),
        "Invalid Content-Range header - bytes 0-5242879/100: the range ends after the file"
    );
    // Another identity (here an unsigned preset) may not add to this upload.
    let form = Form::new()
        .text("upload_preset", "my_unsigned_preset")
        .part(
            "file",
            Part::bytes(file[9 * MIB..].to_vec()).file_name("big.bin"),
        );
    let r = reqwest::Client::new()
        .post(format!("{b}/v1_1/{CLOUD}/raw/upload"))
        .header("content-range", format!("bytes {}-{}/{t}", 9 * MIB, t - 1))
        .header("x-unique-upload-id", "bad")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        message(&r.json().await.unwrap()),
        "This chunked upload was started with another API key or upload preset"
    );
    // The legacy form keyed by public ID needs it after the first part.
    let mut p = Part_::new(b, "", 5 * MIB, 10 * MIB - 1, Some(t));
    p.upload_id = None;
    let (s, r) = p.send(&file).await;
    assert_eq!(
        (s, message(&r).as_str()),
        (400, "Missing required parameter - public_id")
    );
    // After all that, the upload still completes with the right bytes.
    let (s, r) = Part_::new(b, "bad", 9 * MIB, t - 1, Some(t))
        .send(&file)
        .await;
    assert_eq!(s, 200, "{r}");
    assert_stored(&r, &file).await;
    assert_eq!(server.health().await, 200);
    server.stop().await;
}

#[tokio::test]
async fn legacy_form_keyed_by_public_id() {
    let server = TestServer::start().await;
    let file = data(7 * MIB, 5);
    let t = file.len();
    let mut p = Part_::new(&server.base, "", 0, 5 * MIB - 1, Some(t));
    p.upload_id = None;
    p.params.push(("public_id", "legacy.bin".into()));
    assert_eq!(p.send(&file).await.1["done"], false);
    p.start = 5 * MIB;
    p.end = t - 1;
    let (s, r) = p.send(&file).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["public_id"], "legacy.bin");
    assert_stored(&r, &file).await;
    server.stop().await;
}

#[tokio::test]
async fn chunked_video_is_probed_after_assembly() {
    let server = TestServer::start().await;
    let mut file = nephos::media::samples::mp4(1280, 720, 12.0, b"isom");
    let pad = 11 * MIB;
    file.extend_from_slice(&((pad + 8) as u32).to_be_bytes());
    file.extend_from_slice(b"free");
    file.extend(data(pad, 6));
    let t = file.len();
    let mut p = Part_::new(&server.base, "vid", 0, 6 * MIB - 1, None);
    p.rt = "video";
    p.params.push(("public_id", "movies/trailer".into()));
    assert_eq!(p.send(&file).await.0, 200);
    p.start = 6 * MIB;
    p.end = t - 1;
    p.total = Some(t);
    let (s, r) = p.send(&file).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (
            r["format"].as_str(),
            r["width"].as_i64(),
            r["duration"].as_f64()
        ),
        (Some("mp4"), Some(1280), Some(12.0))
    );
    assert_stored(&r, &file).await;
    server.stop().await;
}

async fn server_with(extra: &str) -> TestServer {
    TestServer::start_with_limits(extra).await
}

#[tokio::test]
async fn size_and_session_limits() {
    let server = server_with("max_file_bytes = 8388608\nmax_open_uploads = 2").await;
    let file = data(10 * MIB, 7);
    let b = &server.base;
    let (s, r) = Part_::new(b, "big", 0, 5 * MIB - 1, Some(file.len()))
        .send(&file)
        .await;
    assert_eq!(
        (s, message(&r)),
        (
            400,
            format!(
                "File size too large. Got {}. Maximum is 8388608.",
                file.len()
            )
        )
    );
    let (s, r) = Part_::new(b, "big", 5 * MIB, 10 * MIB - 1, None)
        .send(&file)
        .await;
    assert_eq!(
        (s, message(&r).as_str()),
        (
            400,
            "File size too large. Got 10485760. Maximum is 8388608."
        )
    );
    assert_eq!(
        Part_::new(b, "s1", 0, 5 * MIB - 1, None)
            .send(&file)
            .await
            .0,
        200
    );
    assert_eq!(
        Part_::new(b, "s2", 0, 5 * MIB - 1, None)
            .send(&file)
            .await
            .0,
        200
    );
    let (s, r) = Part_::new(b, "s3", 0, 5 * MIB - 1, None).send(&file).await;
    assert_eq!(
        (s, message(&r).as_str()),
        (
            400,
            "Too many chunked uploads in progress for this cloud (maximum 2)"
        )
    );
    // Parts of open sessions are still welcome.
    assert_eq!(
        Part_::new(b, "s1", 0, 5 * MIB - 1, None)
            .send(&file)
            .await
            .0,
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn abandoned_sessions_expire() {
    let server = server_with("upload_session_ttl_secs = 1").await;
    let file = data(6 * MIB, 8);
    let (s, _) = Part_::new(&server.base, "gone", 0, 5 * MIB - 1, None)
        .send(&file)
        .await;
    assert_eq!(s, 200);
    let chunks = server.data_dir.path().join("chunks");
    assert_eq!(std::fs::read_dir(&chunks).unwrap().count(), 1);
    let mut swept = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if std::fs::read_dir(&chunks).unwrap().count() == 0 {
            swept = true;
            break;
        }
    }
    assert!(swept, "the abandoned session's parts were not removed");
    // The final part alone now starts a new session that cannot complete.
    let (s, r) = Part_::new(
        &server.base,
        "gone",
        5 * MIB,
        file.len() - 1,
        Some(file.len()),
    )
    .send(&file)
    .await;
    assert_eq!(
        (s, r["done"].as_bool(), r["bytes"].as_u64()),
        (200, Some(false), Some(MIB as u64))
    );
    server.stop().await;
}

/// A nephos process started from the built binary.
struct Proc {
    child: std::process::Child,
    base: String,
}

fn spawn_binary(data_dir: &std::path::Path, database_url: Option<&str>) -> Proc {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nephos"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--account",
        "cloudinary://1234567890:abcd@demo",
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .env_remove("NEPHOS_CONFIG")
    .current_dir(data_dir)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    let mut child = cmd.spawn().expect("spawn nephos");
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let base = loop {
        let line = lines.next().expect("nephos output").expect("read line");
        if let Some(b) = line.strip_prefix("nephos listening on ") {
            break b.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Proc { child, base }
}

async fn wait_healthy(base: &str) {
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("{base}/health")).await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{base} did not become healthy");
}

#[tokio::test]
async fn an_upload_survives_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = data(16 * MIB, 9);
    let t = file.len();
    let mut first = spawn_binary(dir.path(), None);
    wait_healthy(&first.base).await;
    for (start, end) in [(0, 5 * MIB - 1), (5 * MIB, 10 * MIB - 1)] {
        let (s, r) = Part_::new(&first.base, "survivor", start, end, Some(t))
            .send(&file)
            .await;
        assert_eq!((s, r["done"].as_bool()), (200, Some(false)), "{r}");
    }
    // SIGKILL: no shutdown, no cleanup.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let mut second = spawn_binary(dir.path(), None);
    wait_healthy(&second.base).await;
    let (s, r) = Part_::new(&second.base, "survivor", 10 * MIB, t - 1, Some(t))
        .send(&file)
        .await;
    assert_eq!(s, 200, "{r}");
    assert_stored(&r, &file).await;
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}

#[tokio::test]
async fn two_processes_share_one_upload_through_postgres() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let pg = PgDb::create(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = spawn_binary(dir.path(), Some(&pg.url));
    wait_healthy(&a.base).await;
    let mut b = spawn_binary(dir.path(), Some(&pg.url));
    wait_healthy(&b.base).await;
    let file = data(21 * MIB + 5, 10);
    let t = file.len();
    let bases = [a.base.clone(), b.base.clone()];
    // Middle parts to both processes at once, alternating.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (base, f) = (bases[i % 2].clone(), file.clone());
        tasks.push(tokio::spawn(async move {
            Part_::new(&base, "shared", i * 5 * MIB, (i + 1) * 5 * MIB - 1, Some(t))
                .send(&f)
                .await
        }));
    }
    for task in tasks {
        let (s, r) = task.await.unwrap();
        assert_eq!((s, r["done"].as_bool()), (200, Some(false)), "{r}");
    }
    let (s, r) = Part_::new(&bases[1], "shared", 20 * MIB, t - 1, Some(t))
        .send(&file)
        .await;
    assert_eq!(s, 200, "{r}");
    assert_stored(&r, &file).await;
    // The other process serves the asset too.
    let url = r["secure_url"]
        .as_str()
        .unwrap()
        .replace(&bases[1], &bases[0]);
    assert_eq!(get_bytes(&url).await.1.len(), t);
    a.child.kill().unwrap();
    b.child.kill().unwrap();
    a.child.wait().unwrap();
    b.child.wait().unwrap();
    pg.drop_db().await;
}

#[tokio::test]
async fn a_refused_part_leaves_no_trace_in_the_etag() {
    let server = TestServer::start().await;
    let file = data(12 * MIB + 3, 11);
    let other = data(12 * MIB + 3, 12);
    let t = file.len();
    let b = &server.base;
    assert_eq!(
        Part_::new(b, "trace", 0, 5 * MIB - 1, Some(t))
            .send(&file)
            .await
            .0,
        200
    );
    // Written in place and fed to the hash, then refused (the total changes).
    let (s, r) = Part_::new(b, "trace", 5 * MIB, 10 * MIB - 1, Some(20 * MIB))
        .send(&other)
        .await;
    assert_eq!(s, 400, "{r}");
    // The same range again with the right bytes, then the end.
    assert_eq!(
        Part_::new(b, "trace", 5 * MIB, 10 * MIB - 1, Some(t))
            .send(&file)
            .await
            .0,
        200
    );
    let (s, r) = Part_::new(b, "trace", 10 * MIB, t - 1, Some(t))
        .send(&file)
        .await;
    assert_eq!(s, 200, "{r}");
    assert_stored(&r, &file).await;
    server.stop().await;
}
