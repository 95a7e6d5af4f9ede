//! A small HTTP load generator for `scripts/bench`: `concurrency` clients send `count`
//! requests in total, each with the same body; prints one JSON line with the request rate and
//! latency percentiles. `{i}` in the URL is replaced by the request number.
//!
//! loadgen URL METHOD BODY_FILE CONTENT_TYPE CONCURRENCY COUNT

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        anyhow::bail!("usage: loadgen URL METHOD BODY_FILE CONTENT_TYPE CONCURRENCY COUNT");
    }
    let url = args[1].clone();
    let method = reqwest::Method::from_bytes(args[2].as_bytes())?;
    let body = bytes::Bytes::from(std::fs::read(&args[3])?);
    let content_type = args[4].clone();
    let concurrency: usize = args[5].parse()?;
    let count: usize = args[6].parse()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(60))
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, body, url, method, ct) = (
            client.clone(),
            next.clone(),
            body.clone(),
            url.clone(),
            method.clone(),
            content_type.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let t = Instant::now();
                let resp = client
                    .request(method.clone(), url.replace("{i}", &i.to_string()))
                    .header("content-type", ct.as_str())
                    .body(body.clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => {
                        if errors == 0 {
                            eprintln!(
                                "status {}: {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                        }
                        errors += 1;
                    }
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("error: {e}");
                        }
                        errors += 1;
                    }
                }
                latencies.push(t.elapsed());
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::with_capacity(count);
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "{{\"count\": {count}, \"errors\": {errors}, \"secs\": {secs:.4}, \"rps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
        count as f64 / secs,
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
