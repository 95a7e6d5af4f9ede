//! `kill -9` during uploads, overwrites, renames and destroys: after each restart every
//! acknowledged write is there, every listed asset downloads with its etag, and no stored file
//! is left that no record refers to (once the orphan sweep ran).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nephos::auth::SignatureAlgorithm;
use serde_json::Value;

fn start(data: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nephos"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args([
            "--account",
            "cloudinary://1234567890:abcd@demo",
            "--orphan-age-secs",
            "0",
        ])
        .env("NEPHOS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nephos");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines.next().expect("nephos exited").unwrap();
        if let Some(b) = line.strip_prefix("nephos listening on ") {
            break b.trim().to_string();
        }
    };
    // Keep reading so that the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, base)
}

/// What a worker knows of its public ID: the etag last acknowledged (`None`: deleted), and
/// the operation in flight (which may or may not have happened when the process died).
#[derive(Default, Clone, Debug)]
struct Known {
    acked: Option<Option<String>>,
    pending: Option<Option<String>>,
}

async fn call(
    client: &reqwest::Client,
    base: &str,
    action: &str,
    params: &[(&str, &str)],
    data: Option<Vec<u8>>,
) -> Option<Value> {
    let ts = now().to_string();
    let mut all: Vec<(&str, &str)> = params.to_vec();
    all.push(("timestamp", &ts));
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in signed(&all, KEY, SECRET, SignatureAlgorithm::Sha1) {
        form = form.text(k, v);
    }
    if let Some(d) = data {
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(d).file_name("f.bin"),
        );
    }
    let r = client
        .post(format!("{base}/v1_1/demo/raw/{action}"))
        .multipart(form)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn worker(base: String, id: usize, known: Arc<Mutex<HashMap<String, Known>>>) {
    let client = reqwest::Client::new();
    let mut n = 0u32;
    loop {
        n += 1;
        let pid = format!("w{id}_{}", n % 3);
        let data: Vec<u8> = format!("{pid}-{n}-")
            .repeat(200 + (n as usize % 50))
            .into_bytes();
        let etag = hex::encode(md5_ref::Md5::digest(&data));
        let op = n % 4;
        let expect = if op == 3 { None } else { Some(etag.clone()) };
        known
            .lock()
            .unwrap()
            .entry(pid.clone())
            .or_default()
            .pending = Some(expect.clone());
        let ok = match op {
            3 => call(&client, &base, "destroy", &[("public_id", &pid)], None)
                .await
                .is_some(),
            _ => call(
                &client,
                &base,
                "upload",
                &[("public_id", &pid), ("overwrite", "true")],
                Some(data),
            )
            .await
            .is_some_and(|v| v["etag"] == etag.as_str()),
        };
        let mut k = known.lock().unwrap();
        let e = k.get_mut(&pid).unwrap();
        if ok {
            e.acked = Some(expect);
            e.pending = None;
        } else {
            // Failed or cut off: it may have happened; stop, the process is being killed.
            return;
        }
    }
}

use md5_ref::Digest;

fn blob_files(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                n += blob_files(&p);
            } else {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_and_no_orphan_stays() {
    let data = tempfile::tempdir().unwrap();
    let known: Arc<Mutex<HashMap<String, Known>>> = Arc::default();
    for cycle in 0..4 {
        let (mut child, base) = start(data.path());
        let workers: Vec<_> = (0..6)
            .map(|i| tokio::spawn(worker(base.clone(), i, known.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + 150 * cycle)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        for w in workers {
            let _ = w.await;
        }
        let (mut child, base) = start(data.path());
        let client = reqwest::Client::new();
        let snapshot = known.lock().unwrap().clone();
        for (pid, k) in &snapshot {
            let r = client
                .get(format!("{base}/v1_1/demo/resources/raw/upload/{pid}"))
                .basic_auth(KEY, Some(SECRET))
                .send()
                .await
                .unwrap();
            let now: Option<String> = if r.status() == 200 {
                let v: Value = r.json().await.unwrap();
                Some(v["etag"].as_str().unwrap().to_string())
            } else {
                assert_eq!(r.status(), 404, "{pid}");
                None
            };
            let possible: Vec<Option<String>> = [k.acked.clone(), k.pending.clone()]
                .into_iter()
                .flatten()
                .collect();
            if !possible.is_empty() {
                assert!(
                    possible.contains(&now),
                    "cycle {cycle}, {pid}: {now:?} not in {possible:?}"
                );
            }
            // Whatever is there now is what the next cycle builds on.
            {
                let mut all = known.lock().unwrap();
                let e = all.get_mut(pid).unwrap();
                e.acked = Some(now.clone());
                e.pending = None;
            }
            if let Some(etag) = now {
                let url = format!("{base}/demo/raw/upload/{pid}");
                let bytes = client
                    .get(&url)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                assert_eq!(hex::encode(md5_ref::Md5::digest(&bytes)), etag, "{pid}");
            }
        }
        // Every stored file belongs to an asset once the sweep at start has run.
        let assets = snapshot.len()
            - known
                .lock()
                .unwrap()
                .values()
                .filter(|k| k.acked == Some(None))
                .count();
        let blobs = data.path().join("blobs");
        let mut files = blob_files(&blobs);
        for _ in 0..50 {
            if files == assets {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            files = blob_files(&blobs);
        }
        assert_eq!(files, assets, "cycle {cycle}: stored files vs assets");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
