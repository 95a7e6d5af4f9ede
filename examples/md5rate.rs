//! Hashes a file with the MD5 implementation nephos uses, for `scripts/bench`: prints the
//! seconds it took (after one warm-up read) and the digest.
use nephos::storage::md5::Md5;
use std::io::Read;

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).expect("usage: md5rate FILE");
    let mut buf = vec![0u8; 1024 * 1024];
    let t = std::time::Instant::now();
    let mut f = std::fs::File::open(&path)?;
    let mut h = Md5::new();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    println!(
        "{} {}",
        t.elapsed().as_secs_f64(),
        hex::encode(h.finalize())
    );
    Ok(())
}
