//! What nephos can tell about an image's pixels and embedded data without outside services:
//! its predominant colours (`colors`), a perceptual hash (`phash`) and its embedded metadata
//! (`image_metadata`: EXIF fields, read with the kamadak-exif crate, plus file facts).

use std::collections::HashMap;
use std::io::Cursor;

use image::DynamicImage;
use serde_json::{json, Map, Value as Json};

/// Decodes an image for analysis, refusing those over `max_pixels`.
fn decode(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, String> {
    let (w, h) = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
        .map_err(|e| e.to_string())?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(format!("The image is too large to analyse ({w}x{h})"));
    }
    image::load_from_memory(bytes).map_err(|e| e.to_string())
}

/// `colors` (the most frequent colours, `[["#RRGGBB", percent], …]`) and `predominant`
/// (the same by colour name), from a 64×64 thumbnail, colours rounded to 4 bits a channel.
pub fn colors(bytes: &[u8], max_pixels: u64) -> Result<(Json, Json), String> {
    let img = decode(bytes, max_pixels)?;
    let img = if img.width() > 64 || img.height() > 64 {
        img.thumbnail(64, 64)
    } else {
        img
    }
    .to_rgba8();
    let mut counts: HashMap<[u8; 3], u32> = HashMap::new();
    let mut total = 0u32;
    for p in img.pixels() {
        if p[3] < 128 {
            continue;
        }
        let q = [p[0] & 0xF0 | 0x08, p[1] & 0xF0 | 0x08, p[2] & 0xF0 | 0x08];
        *counts.entry(q).or_default() += 1;
        total += 1;
    }
    let mut list: Vec<([u8; 3], u32)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let pct = |n: u32| ((f64::from(n) * 1000.0 / f64::from(total.max(1))).round()) / 10.0;
    let colors: Vec<Json> = list
        .iter()
        .take(12)
        .map(|(c, n)| json!([format!("#{:02X}{:02X}{:02X}", c[0], c[1], c[2]), pct(*n)]))
        .collect();
    let mut named: HashMap<&str, u32> = HashMap::new();
    for (c, n) in &list {
        *named.entry(nearest_name(*c)).or_default() += n;
    }
    let mut named: Vec<(&str, u32)> = named.into_iter().collect();
    named.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let predominant: Vec<Json> = named
        .iter()
        .take(6)
        .map(|(name, n)| json!([name, pct(*n)]))
        .collect();
    Ok((
        Json::Array(colors),
        json!({ "google": predominant, "cloudinary": predominant }),
    ))
}

fn nearest_name(c: [u8; 3]) -> &'static str {
    const NAMES: &[(&str, [u8; 3])] = &[
        ("black", [0, 0, 0]),
        ("white", [255, 255, 255]),
        ("gray", [128, 128, 128]),
        ("red", [220, 30, 30]),
        ("orange", [250, 150, 30]),
        ("yellow", [245, 230, 40]),
        ("green", [40, 160, 60]),
        ("teal", [0, 128, 128]),
        ("blue", [30, 80, 220]),
        ("lightblue", [150, 200, 240]),
        ("purple", [130, 50, 160]),
        ("pink", [240, 140, 190]),
        ("brown", [130, 80, 40]),
    ];
    let dist = |a: [u8; 3], b: [u8; 3]| -> i32 {
        (0..3)
            .map(|i| (i32::from(a[i]) - i32::from(b[i])).pow(2))
            .sum()
    };
    NAMES
        .iter()
        .min_by_key(|(_, rgb)| dist(c, *rgb))
        .map(|(n, _)| *n)
        .unwrap_or("gray")
}

/// A 64-bit perceptual hash (DCT of a 32×32 grayscale, the 8×8 lowest frequencies compared
/// to their median), as 16 hex digits.
pub fn phash(bytes: &[u8], max_pixels: u64) -> Result<String, String> {
    let img = decode(bytes, max_pixels)?
        .resize_exact(32, 32, image::imageops::FilterType::Triangle)
        .to_luma8();
    let px: Vec<f64> = img.pixels().map(|p| f64::from(p[0])).collect();
    let n = 32usize;
    let mut coeffs = Vec::with_capacity(64);
    for u in 0..8 {
        for v in 0..8 {
            let mut sum = 0.0;
            for y in 0..n {
                for x in 0..n {
                    sum += px[y * n + x]
                        * (((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI) / 64.0).cos()
                        * (((2 * y + 1) as f64 * v as f64 * std::f64::consts::PI) / 64.0).cos();
                }
            }
            coeffs.push(sum);
        }
    }
    let mut sorted: Vec<f64> = coeffs[1..].to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let median = sorted[sorted.len() / 2];
    let bits = coeffs
        .iter()
        .fold(0u64, |acc, c| (acc << 1) | u64::from(*c > median));
    Ok(format!("{bits:016x}"))
}

/// `quality_analysis`: nephos's own measure of sharpness (`focus`, 0–1: the variance of the
/// Laplacian of the grayscale image, at most 512 pixels a side, mapped through
/// `1 - e^(-variance/500)`). Cloudinary's other quality scores come from its models and are
/// not given.
pub fn quality(bytes: &[u8], max_pixels: u64) -> Result<Json, String> {
    let img = decode(bytes, max_pixels)?;
    let gray = if img.width() > 512 || img.height() > 512 {
        img.thumbnail(512, 512).to_luma8()
    } else {
        img.to_luma8()
    };
    let (w, h) = (gray.width() as i64, gray.height() as i64);
    let at = |x: i64, y: i64| {
        f64::from(gray.get_pixel(x.clamp(0, w - 1) as u32, y.clamp(0, h - 1) as u32)[0])
    };
    let mut values = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            values.push(at(x - 1, y) + at(x + 1, y) + at(x, y - 1) + at(x, y + 1) - 4.0 * at(x, y));
        }
    }
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let focus = ((1.0 - (-variance / 500.0).exp()) * 100.0).round() / 100.0;
    Ok(json!({ "focus": focus }))
}

/// `image_metadata`: the file's facts and its EXIF fields (tag name → displayed value).
pub fn image_metadata(bytes: &[u8], format: &str, width: i64, height: i64) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("FileType".into(), json!(format.to_ascii_uppercase()));
    let mime = match format {
        "jpg" | "jpeg" => "image/jpeg".to_string(),
        "tif" | "tiff" => "image/tiff".to_string(),
        "svg" => "image/svg+xml".to_string(),
        f => format!("image/{f}"),
    };
    m.insert("MIMEType".into(), json!(mime));
    m.insert("ImageWidth".into(), json!(width.to_string()));
    m.insert("ImageHeight".into(), json!(height.to_string()));
    if let Ok(exif) = exif::Reader::new().read_from_container(&mut Cursor::new(bytes)) {
        for f in exif.fields().take(500) {
            let name = f.tag.to_string();
            if name.starts_with("Tag(") || m.contains_key(&name) {
                continue;
            }
            let value = f.display_value().with_unit(&exif).to_string();
            if value.len() <= 1024 {
                m.insert(name, json!(value));
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgba, RgbaImage};

    fn png(f: impl Fn(u32, u32) -> Rgba<u8>) -> Vec<u8> {
        let img = RgbaImage::from_fn(40, 20, f);
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(img)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn colors_are_counted() {
        let bytes = png(|x, _| {
            if x < 30 {
                Rgba([255, 255, 255, 255])
            } else {
                Rgba([200, 0, 0, 255])
            }
        });
        let (colors, predominant) = colors(&bytes, 1_000_000).unwrap();
        assert_eq!(colors[0][0], json!("#F8F8F8"));
        assert_eq!(colors[0][1], json!(75.0));
        assert_eq!(predominant["google"][0][0], json!("white"));
    }

    #[test]
    fn phash_tells_images_apart() {
        let a = png(|x, y| Rgba([(x * 6) as u8, (y * 12) as u8, 0, 255]));
        let b = png(|x, _| {
            if x % 8 < 4 {
                Rgba([0, 0, 0, 255])
            } else {
                Rgba([255; 4])
            }
        });
        let (ha, hb) = (phash(&a, 1_000_000).unwrap(), phash(&b, 1_000_000).unwrap());
        assert_eq!(ha.len(), 16);
        assert_ne!(ha, hb);
        assert_eq!(ha, phash(&a, 1_000_000).unwrap());
        assert!(phash(&a, 10).is_err());
    }

    #[test]
    fn metadata_has_file_facts() {
        let m = image_metadata(&png(|_, _| Rgba([0; 4])), "png", 40, 20);
        assert_eq!(m["FileType"], json!("PNG"));
        assert_eq!(m["ImageWidth"], json!("40"));
    }
}
