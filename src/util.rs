//! Small helpers shared by several modules.

use rand::Rng;

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `n` random characters of `[a-z0-9]` (Cloudinary's random public IDs and suffixes).
pub fn random_alnum(n: usize) -> String {
    let mut rng = rand::thread_rng();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 32];
    while out.len() < n {
        rng.fill(&mut buf[..]);
        // 252 = 7 × 36: the bytes below it fall evenly on the 36 characters.
        for b in buf.iter().filter(|b| **b < 252).take(n - out.len()) {
            out.push(char::from(ALNUM[usize::from(b % 36)]));
        }
    }
    out
}

/// Milliseconds of the Unix time (the clock part of generated IDs).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A generated public ID: 20 characters of `[a-z0-9]` like Cloudinary's random ones, whose
/// first 8 are the milliseconds of the Unix time in base 36 (IDs made one after another sort
/// together, so the indexes keyed by public ID grow at one place instead of at a random page
/// per upload) and whose last 12 are random (about 62 bits).
pub fn new_public_id() -> String {
    let ms = unix_ms();
    // 36^8 ms is about 89 years: past 2059 the clock part wraps (order only, never length).
    // Its digits in ASCII order, so that the text sorts as the number does.
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut clock = ms % 36u64.pow(8);
    let mut out = String::with_capacity(20);
    let mut head = [b'0'; 8];
    for slot in head.iter_mut().rev() {
        *slot = DIGITS[(clock % 36) as usize];
        clock /= 36;
    }
    out.extend(head.iter().map(|&b| char::from(b)));
    out.push_str(&random_alnum(12));
    out
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill(&mut buf[..]);
    hex::encode(buf)
}

/// A new asset ID: 32 hex digits, like Cloudinary's, whose first 12 are the milliseconds of
/// the Unix time (so IDs made one after another sort together: an index of them grows at its
/// end instead of at a random page) and whose last 20 are random.
pub fn new_asset_id() -> String {
    let ms = unix_ms();
    let mut buf = [0u8; 16];
    buf[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    rand::thread_rng().fill(&mut buf[6..]);
    hex::encode(buf)
}

/// Interprets a boolean parameter the way Cloudinary does: `1`, `true`, `yes` (any case) are
/// true; `0`, `false`, `no` and the empty string are false; anything else is not a boolean.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Some(true),
        "0" | "false" | "no" | "" => Some(false),
        _ => None,
    }
}

/// RFC 3339 UTC with seconds and a `Z`: `2024-06-25T09:25:44Z`.
pub fn iso_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The external ID of a folder (stable for its path).
pub fn folder_external_id(path: &str) -> String {
    use sha1::Digest;
    hex::encode(&sha1::Sha1::digest(path.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_alnum_gives_the_length_asked_in_all_36_characters() {
        for n in [0, 1, 6, 20, 33, 100] {
            assert_eq!(random_alnum(n).len(), n);
        }
        let many = random_alnum(3600);
        assert!(many.bytes().all(|b| ALNUM.contains(&b)));
        // Each character is drawn with probability 1/36: all of them show up in 3,600.
        assert!(ALNUM.iter().all(|c| many.as_bytes().contains(c)));
        assert_ne!(random_alnum(20), random_alnum(20));
    }

    #[test]
    fn generated_public_ids_are_20_alnum_characters_in_creation_order() {
        let first = new_public_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_public_id();
        for id in [&first, &second] {
            assert_eq!(id.len(), 20, "{id}");
            assert!(id.bytes().all(|b| ALNUM.contains(&b)), "{id}");
        }
        assert!(first < second, "{first} then {second}");
        // The clock part is today's milliseconds in base 36, most significant first.
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let clock = u64::from_str_radix(&second[..8], 36).unwrap();
        assert!(clock <= ms % 36u64.pow(8) && ms % 36u64.pow(8) - clock < 60_000);
        // The random part differs between IDs of the same millisecond.
        assert_ne!(new_public_id()[8..], new_public_id()[8..]);
    }

    #[test]
    fn iso_times_are_utc_seconds_with_z() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(1719307544), "2024-06-25T09:25:44Z");
        assert_eq!(iso_time(4102444799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn asset_ids_are_32_hex_digits_in_creation_order() {
        let first = new_asset_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_asset_id();
        for id in [&first, &second] {
            assert_eq!(id.len(), 32);
            assert!(id
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
        assert!(first < second, "{first} then {second}");
        // The random part differs between IDs of the same millisecond.
        assert_ne!(new_asset_id()[12..], new_asset_id()[12..]);
    }
}
