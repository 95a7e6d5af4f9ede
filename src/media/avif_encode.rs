//! Writing AVIF: one still picture, encoded by `ravif` (rav1e, pure Rust, no assembly) at its
//! fastest speed and on the render's own thread, so render turns bound it like any render.
//! AV1 encoding is costly (measured: about 1.1 s of CPU per megapixel and 36 bytes of memory
//! a pixel), so pictures are written as AVIF up to [`MAX_PIXELS`].

use image::DynamicImage;

/// The most pixels written as AVIF: 2048 × 2048.
pub const MAX_PIXELS: u64 = 2048 * 2048;

/// Memory the encoder takes a pixel, about (for the render's memory budget).
pub const BYTES_PER_PIXEL: u64 = 36;

/// Whether a picture of `w` × `h` is written as AVIF.
pub fn fits(w: u32, h: u32) -> bool {
    u64::from(w) * u64::from(h) <= MAX_PIXELS
}

/// The format of what was written for `asked`: `f_auto` writes WebP where a picture is too
/// large for AVIF (see `transform::encode`), so for `avif` the bytes say which.
pub fn written_format<'a>(asked: &'a str, bytes: &[u8]) -> &'a str {
    if asked == "avif" && bytes.get(8..12) != Some(&b"avif"[..]) {
        "webp"
    } else {
        asked
    }
}

/// The picture as an AVIF file at `quality` (1–100), alpha kept.
pub fn still(img: &DynamicImage, quality: u8) -> Result<Vec<u8>, String> {
    let (w, h) = (img.width(), img.height());
    if !fits(w, h) {
        return Err(format!(
            "Cannot encode avif: {w}x{h} is more than nephos writes as AVIF ({MAX_PIXELS} pixels; ask for a smaller size or another format)"
        ));
    }
    let encoder = ravif::Encoder::new()
        .with_quality(f32::from(quality.clamp(1, 100)))
        .with_alpha_quality(f32::from(quality.clamp(1, 100)))
        .with_speed(10)
        .with_num_threads(Some(1));
    let failed = |e: ravif::Error| format!("Cannot encode avif: {e}");
    let encoded = if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let pixels: Vec<rgb::RGBA8> = rgba
            .pixels()
            .map(|p| rgb::RGBA8::new(p[0], p[1], p[2], p[3]))
            .collect();
        encoder
            .encode_rgba(ravif::Img::new(&pixels[..], w as usize, h as usize))
            .map_err(failed)?
    } else {
        let rgb = img.to_rgb8();
        let pixels: Vec<rgb::RGB8> = rgb
            .pixels()
            .map(|p| rgb::RGB8::new(p[0], p[1], p[2]))
            .collect();
        encoder
            .encode_rgb(ravif::Img::new(&pixels[..], w as usize, h as usize))
            .map_err(failed)?
    };
    Ok(encoded.avif_file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    #[test]
    fn writes_an_avif_file_of_the_picture_size() {
        for alpha in [false, true] {
            let img = RgbaImage::from_fn(40, 24, |x, y| {
                Rgba([
                    (x * 6) as u8,
                    (y * 10) as u8,
                    90,
                    if alpha { 128 } else { 255 },
                ])
            });
            let img = if alpha {
                DynamicImage::ImageRgba8(img)
            } else {
                DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(img).to_rgb8())
            };
            let out = still(&img, 60).unwrap();
            assert_eq!(&out[4..12], b"ftypavif");
            let size = imagesize::blob_size(&out).unwrap();
            assert_eq!((size.width, size.height), (40, 24));
        }
        let big = DynamicImage::new_rgb8(2049, 2048);
        assert!(still(&big, 80).unwrap_err().contains("AVIF"));
    }
}
