//! Writing WebP: still images and animations, lossless (the image crate's VP8L encoder) or
//! lossy (libwebp's VP8 encoder, through the `webp` crate, built from its bundled sources), and
//! whether a source is lossy to begin with.

use image::{DynamicImage, Frame, RgbaImage};

/// How lossy formats are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// `q_`: 1–100 for JPEG and lossy WebP.
    pub quality: u8,
    /// WebP written lossy (VP8, with alpha beside it) rather than lossless (VP8L).
    pub lossy_webp: bool,
    /// `f_auto` chose the format: a picture too large for AVIF is written as WebP instead.
    pub auto_format: bool,
}

impl Encoding {
    /// Lossless WebP, the given JPEG quality: for images nephos makes itself.
    pub fn lossless(quality: u8) -> Encoding {
        Encoding {
            quality,
            lossy_webp: false,
            auto_format: false,
        }
    }
}

/// Whether the bytes hold a lossy picture: a JPEG, or a WebP whose first picture is VP8.
pub fn is_lossy_source(bytes: &[u8]) -> bool {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return true;
    }
    if bytes.len() < 12 || !bytes.starts_with(b"RIFF") || &bytes[8..12] != b"WEBP" {
        return false;
    }
    // The first picture chunk decides: at the top level, or inside the first ANMF frame.
    let mut at = 12usize;
    for _ in 0..32 {
        let Some(head) = bytes.get(at..at + 8) else {
            return false;
        };
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        match &head[..4] {
            b"VP8 " => return true,
            b"VP8L" => return false,
            // An ANMF payload starts with 16 bytes of frame header, then its chunks.
            b"ANMF" => at += 8 + 16,
            _ => at = at.saturating_add(8).saturating_add(len + (len & 1)),
        }
    }
    false
}

fn failed(e: impl std::fmt::Debug) -> String {
    format!("Cannot encode webp: {e:?}")
}

/// One picture as a whole WebP file.
pub fn still(img: &DynamicImage, encoding: Encoding) -> Result<Vec<u8>, String> {
    if encoding.lossy_webp {
        return lossy_file(img, encoding.quality);
    }
    let rgba = img.to_rgba8();
    lossless_file(&rgba)
}

fn lossless_file(rgba: &RgbaImage) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .encode(
            rgba.as_raw(),
            rgba.width(),
            rgba.height(),
            image::ExtendedColorType::Rgba8,
        )
        .map_err(|e| format!("Cannot encode webp: {e}"))?;
    Ok(out)
}

fn lossy_file(img: &DynamicImage, quality: u8) -> Result<Vec<u8>, String> {
    let (w, h) = (img.width(), img.height());
    // libwebp's VP8 holds at most 16383 pixels a side.
    if w > 16383 || h > 16383 {
        return Err(format!(
            "Cannot encode webp: {w}x{h} is larger than WebP allows (16383 a side)"
        ));
    }
    let q = f32::from(quality.clamp(1, 100));
    let memory = if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        webp::Encoder::from_rgba(rgba.as_raw(), w, h).encode_simple(false, q)
    } else {
        let rgb = img.to_rgb8();
        webp::Encoder::from_rgb(rgb.as_raw(), w, h).encode_simple(false, q)
    }
    .map_err(failed)?;
    Ok(memory.to_vec())
}

/// The chunks of a simple WebP file that make up a frame's data (ALPH and VP8, or VP8L):
/// everything after the RIFF header and an extended-format VP8X chunk.
fn frame_chunks(file: &[u8]) -> Result<&[u8], String> {
    let short = || "Cannot encode webp: the frame encoder gave a short file".to_string();
    let mut body = file.get(12..).ok_or_else(short)?;
    if body.starts_with(b"VP8X") {
        body = body.get(18..).ok_or_else(short)?;
    }
    if !(body.starts_with(b"ALPH") || body.starts_with(b"VP8 ") || body.starts_with(b"VP8L")) {
        return Err("Cannot encode webp: unexpected frame encoding".into());
    }
    Ok(body)
}

/// A RIFF chunk: its name, length and payload, padded to an even length.
fn chunk(out: &mut Vec<u8>, name: &[u8; 4], payload: &[u8]) -> Result<(), String> {
    let len =
        u32::try_from(payload.len()).map_err(|_| "Cannot encode webp: a frame is too large")?;
    out.extend_from_slice(name);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    if payload.len() % 2 == 1 {
        out.push(0);
    }
    Ok(())
}

fn u24(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.min(0xFF_FFFF).to_le_bytes()[..3]);
}

/// An animated WebP (VP8X + ANIM + one ANMF per frame, each frame the whole canvas and not
/// blended with the one before), frames lossless or lossy as `encoding` says.
pub fn animation(frames: Vec<Frame>, encoding: Encoding) -> Result<Vec<u8>, String> {
    let (mut cw, mut ch) = (1u32, 1u32);
    for f in &frames {
        cw = cw.max(f.left() + f.buffer().width());
        ch = ch.max(f.top() + f.buffer().height());
    }
    if cw > 1 << 24 || ch > 1 << 24 {
        return Err("Cannot encode webp: the animation is too large".into());
    }
    let mut body = Vec::new();
    let mut vp8x = vec![0x10 | 0x02, 0, 0, 0];
    u24(&mut vp8x, cw - 1);
    u24(&mut vp8x, ch - 1);
    chunk(&mut body, b"VP8X", &vp8x)?;
    // Transparent background, loop forever.
    chunk(&mut body, b"ANIM", &[0, 0, 0, 0, 0, 0])?;
    for f in frames {
        let (left, top, delay) = (f.left(), f.top(), f.delay());
        let buffer = f.into_buffer();
        let (w, h) = buffer.dimensions();
        let file = if encoding.lossy_webp {
            lossy_file(&DynamicImage::ImageRgba8(buffer), encoding.quality)?
        } else {
            lossless_file(&buffer)?
        };
        let data = frame_chunks(&file)?;
        let (num, den) = delay.numer_denom_ms();
        let ms = num.checked_div(den).unwrap_or(0);
        let mut anmf = Vec::with_capacity(data.len() + 16);
        u24(&mut anmf, left / 2);
        u24(&mut anmf, top / 2);
        u24(&mut anmf, w - 1);
        u24(&mut anmf, h - 1);
        u24(&mut anmf, ms);
        // Not blended with the frame before; not disposed.
        anmf.push(0x02);
        anmf.extend_from_slice(data);
        chunk(&mut body, b"ANMF", &anmf)?;
    }
    let size = u32::try_from(body.len() + 4).map_err(|_| "Cannot encode webp: too large")?;
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Delay, GenericImageView, Rgba};

    fn photo(w: u32, h: u32, alpha: bool) -> DynamicImage {
        let img = RgbaImage::from_fn(w, h, |x, y| {
            let a = if alpha && x < w / 4 { 0 } else { 255 };
            Rgba([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x ^ y) % 256) as u8,
                a,
            ])
        });
        DynamicImage::ImageRgba8(img)
    }

    fn decode(bytes: &[u8]) -> DynamicImage {
        image::load_from_memory_with_format(bytes, image::ImageFormat::WebP).unwrap()
    }

    #[test]
    fn lossy_stills_are_vp8_and_follow_the_quality() {
        let img = photo(320, 200, false);
        let lossy = |q| {
            still(
                &img,
                Encoding {
                    quality: q,
                    lossy_webp: true,
                    auto_format: false,
                },
            )
            .unwrap()
        };
        let (low, high) = (lossy(30), lossy(95));
        assert_eq!(&low[12..16], b"VP8 ");
        assert!(is_lossy_source(&low));
        assert!(low.len() < high.len(), "{} vs {}", low.len(), high.len());
        let back = decode(&high);
        assert_eq!(back.dimensions(), (320, 200));
        // Close to the source, not equal to it.
        let p = back.get_pixel(200, 100);
        let q = img.get_pixel(200, 100);
        for c in 0..3 {
            assert!(
                (i16::from(p[c]) - i16::from(q[c])).abs() < 40,
                "{p:?} vs {q:?}"
            );
        }
        let lossless = still(&img, Encoding::lossless(80)).unwrap();
        assert_eq!(&lossless[12..16], b"VP8L");
        assert!(!is_lossy_source(&lossless));
        assert_eq!(decode(&lossless).to_rgba8(), img.to_rgba8());
    }

    #[test]
    fn lossy_stills_keep_transparency() {
        let img = photo(64, 64, true);
        let out = still(
            &img,
            Encoding {
                quality: 80,
                lossy_webp: true,
                auto_format: false,
            },
        )
        .unwrap();
        assert_eq!(&out[12..16], b"VP8X");
        assert!(is_lossy_source(&out));
        let back = decode(&out);
        assert_eq!(back.get_pixel(2, 2)[3], 0);
        assert_eq!(back.get_pixel(60, 2)[3], 255);
    }

    #[test]
    fn animations_in_both_encodings_decode_frame_by_frame() {
        use image::AnimationDecoder;
        for lossy_webp in [false, true] {
            let frames: Vec<Frame> = (0..3)
                .map(|k| {
                    Frame::from_parts(
                        photo(48 + k * 8, 40, k == 1).to_rgba8(),
                        0,
                        0,
                        Delay::from_numer_denom_ms(100 + k * 10, 1),
                    )
                })
                .collect();
            let out = animation(
                frames,
                Encoding {
                    quality: 80,
                    lossy_webp,
                    auto_format: false,
                },
            )
            .unwrap();
            assert_eq!(is_lossy_source(&out), lossy_webp);
            let decoder =
                image::codecs::webp::WebPDecoder::new(std::io::Cursor::new(&out[..])).unwrap();
            assert!(decoder.has_animation());
            let frames: Vec<Frame> = decoder.into_frames().collect::<Result<_, _>>().unwrap();
            assert_eq!(frames.len(), 3);
            assert_eq!(frames[2].delay().numer_denom_ms(), (120, 1));
            assert_eq!(frames[0].buffer().dimensions(), (64, 40));
        }
    }

    #[test]
    fn sources_are_told_apart() {
        assert!(is_lossy_source(&[0xFF, 0xD8, 0xFF, 0xE0]));
        assert!(!is_lossy_source(b"\x89PNG\r\n\x1a\n"));
        assert!(!is_lossy_source(b"RIFF\x04\0\0\0WEBP"));
        assert!(!is_lossy_source(
            b"RIFF\xff\xff\xff\xffWEBPJUNK\xff\xff\xff\xff"
        ));
    }
}
