//! Images of many pages: the frames of animated GIFs and WebPs and the pages of TIFFs —
//! counted, one of them taken, or all frames decoded — and animations encoded as GIF or WebP.

use std::io::Cursor;

use image::{AnimationDecoder, DynamicImage, Frame, Frames};

/// The containers that can hold more than one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Gif,
    WebP,
    Tiff,
    Other,
}

fn container(bytes: &[u8]) -> Container {
    if bytes.starts_with(b"GIF8") {
        Container::Gif
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Container::WebP
    } else if bytes.starts_with(b"II*\0")
        || bytes.starts_with(b"MM\0*")
        || bytes.starts_with(b"II+\0")
        || bytes.starts_with(b"MM\0+")
    {
        Container::Tiff
    } else {
        Container::Other
    }
}

fn cannot_decode(e: impl std::fmt::Display) -> String {
    format!("Cannot decode the image: {e}")
}

fn webp_decoder(bytes: &[u8]) -> Result<image::codecs::webp::WebPDecoder<Cursor<&[u8]>>, String> {
    image::codecs::webp::WebPDecoder::new(Cursor::new(bytes)).map_err(cannot_decode)
}

/// Whether the image is an animation: a GIF or a WebP with animation frames.
pub fn is_animated(bytes: &[u8]) -> bool {
    match container(bytes) {
        Container::Gif => true,
        Container::WebP => webp_decoder(bytes).is_ok_and(|d| d.has_animation()),
        _ => false,
    }
}

/// The frames of an animated GIF or WebP, each the whole canvas as it is shown (earlier frames
/// composed under it), with its delay. `None` for other images.
pub fn frames(bytes: &[u8]) -> Result<Option<Frames<'_>>, String> {
    match container(bytes) {
        Container::Gif => {
            let decoder =
                image::codecs::gif::GifDecoder::new(Cursor::new(bytes)).map_err(cannot_decode)?;
            Ok(Some(decoder.into_frames()))
        }
        Container::WebP => {
            let decoder = webp_decoder(bytes)?;
            if !decoder.has_animation() {
                return Ok(None);
            }
            Ok(Some(decoder.into_frames()))
        }
        _ => Ok(None),
    }
}

/// How many pages an image has (frames of an animation, pages of a TIFF), counting at most `most`.
pub fn count(bytes: &[u8], most: u32) -> Result<u32, String> {
    if container(bytes) == Container::Tiff {
        let mut decoder = tiff::decoder::Decoder::new(Cursor::new(bytes)).map_err(cannot_decode)?;
        let mut pages = 1;
        while pages < most && decoder.more_images() && decoder.next_image().is_ok() {
            pages += 1;
        }
        return Ok(pages);
    }
    match frames(bytes)? {
        Some(frames) => Ok(frames.take(most as usize).count().max(1) as u32),
        None => Ok(1),
    }
}

/// Page `n` (1-based) of an image: a frame of an animated GIF or WebP, or a page of a TIFF
/// (decoded within `max_pixels` and `max_decode` bytes). Other images have one page.
pub fn page(
    bytes: &[u8],
    n: u32,
    max_pixels: u64,
    max_decode: u64,
) -> Result<DynamicImage, String> {
    let none = || format!("The image has no page {n}");
    if container(bytes) == Container::Tiff {
        return tiff_page(bytes, n, max_pixels, max_decode);
    }
    let Some(frames) = frames(bytes)? else {
        return Err(format!(
            "The image has no page {n} (only animated GIFs and WebPs and TIFFs have pages)"
        ));
    };
    let frame = frames
        .into_iter()
        .nth(n.saturating_sub(1) as usize)
        .ok_or_else(none)?
        .map_err(cannot_decode)?;
    Ok(DynamicImage::ImageRgba8(frame.into_buffer()))
}

fn tiff_page(
    bytes: &[u8],
    n: u32,
    max_pixels: u64,
    max_decode: u64,
) -> Result<DynamicImage, String> {
    use tiff::decoder::{DecodingResult as D, Limits};
    use tiff::ColorType as C;
    let budget = usize::try_from(max_decode).unwrap_or(usize::MAX);
    let mut limits = Limits::default();
    limits.decoding_buffer_size = budget;
    limits.intermediate_buffer_size = budget;
    let mut decoder = tiff::decoder::Decoder::new(Cursor::new(bytes))
        .map_err(cannot_decode)?
        .with_limits(limits);
    decoder
        .seek_to_image(n.saturating_sub(1) as usize)
        .map_err(|_| format!("The image has no page {n}"))?;
    let (w, h) = decoder.dimensions().map_err(cannot_decode)?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(format!(
            "Page {n} is too large to transform ({w}x{h}; at most {max_pixels} pixels)"
        ));
    }
    let colour = decoder.colortype().map_err(cannot_decode)?;
    let data = decoder.read_image().map_err(|e| match e {
        tiff::TiffError::LimitsExceeded => format!(
            "The image is too large to transform: decoding page {n} ({w}x{h}) needs more than {max_decode} bytes"
        ),
        e => cannot_decode(e),
    })?;
    let img = match (colour, data) {
        (C::Gray(8), D::U8(v)) => image::GrayImage::from_raw(w, h, v).map(DynamicImage::ImageLuma8),
        (C::GrayA(8), D::U8(v)) => {
            image::GrayAlphaImage::from_raw(w, h, v).map(DynamicImage::ImageLumaA8)
        }
        (C::RGB(8), D::U8(v)) => image::RgbImage::from_raw(w, h, v).map(DynamicImage::ImageRgb8),
        (C::RGBA(8), D::U8(v)) => image::RgbaImage::from_raw(w, h, v).map(DynamicImage::ImageRgba8),
        (C::Gray(16), D::U16(v)) => {
            image::ImageBuffer::from_raw(w, h, v).map(DynamicImage::ImageLuma16)
        }
        (C::GrayA(16), D::U16(v)) => {
            image::ImageBuffer::from_raw(w, h, v).map(DynamicImage::ImageLumaA16)
        }
        (C::RGB(16), D::U16(v)) => {
            image::ImageBuffer::from_raw(w, h, v).map(DynamicImage::ImageRgb16)
        }
        (C::RGBA(16), D::U16(v)) => {
            image::ImageBuffer::from_raw(w, h, v).map(DynamicImage::ImageRgba16)
        }
        (colour, _) => {
            return Err(format!(
                "Page {n} of the TIFF has a pixel layout that cannot be transformed ({colour:?})"
            ))
        }
    };
    img.ok_or_else(|| format!("Page {n} of the TIFF is shorter than its size says"))
}

/// Frames encoded as a looping animation: `gif` or `webp` (each frame the whole canvas and
/// not blended with the one before; WebP frames lossless or lossy as `encoding` says).
pub fn encode_animation(
    frames: Vec<Frame>,
    format: &str,
    encoding: super::webp_encode::Encoding,
) -> Result<Vec<u8>, String> {
    match format {
        "webp" => super::webp_encode::animation(frames, encoding),
        _ => encode_gif(frames),
    }
}

fn encode_gif(frames: Vec<Frame>) -> Result<Vec<u8>, String> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let failed = |e: image::ImageError| format!("Cannot encode gif: {e}");
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut out, 10);
        encoder.set_repeat(Repeat::Infinite).map_err(failed)?;
        encoder.encode_frames(frames).map_err(failed)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Delay, Rgba, RgbaImage};

    fn animation(format: &str) -> Vec<u8> {
        let frames = (0..3u8)
            .map(|k| {
                let img = RgbaImage::from_pixel(6, 4, Rgba([k * 100, 50, 200 - k * 60, 255]));
                Frame::from_parts(img, 0, 0, Delay::from_numer_denom_ms(120, 1))
            })
            .collect();
        encode_animation(
            frames,
            format,
            super::super::webp_encode::Encoding::lossless(80),
        )
        .unwrap()
    }

    #[test]
    fn animated_webp_round_trips() {
        let bytes = animation("webp");
        assert!(is_animated(&bytes));
        assert_eq!(count(&bytes, 100).unwrap(), 3);
        let frames: Vec<Frame> = frames(&bytes).unwrap().unwrap().collect_frames().unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(
            frames[2].buffer().get_pixel(3, 2),
            &Rgba([200, 50, 80, 255])
        );
        assert_eq!(frames[1].delay().numer_denom_ms(), (120, 1));
        let second = page(&bytes, 2, 1000, 1 << 20).unwrap().to_rgba8();
        assert_eq!(second.get_pixel(0, 0), &Rgba([100, 50, 140, 255]));
        assert!(page(&bytes, 4, 1000, 1 << 20).is_err());
    }

    #[test]
    fn gif_pages() {
        let bytes = animation("gif");
        assert_eq!(count(&bytes, 100).unwrap(), 3);
        assert_eq!(count(&bytes, 2).unwrap(), 2);
        assert!(page(&bytes, 3, 1000, 1 << 20).is_ok());
    }

    fn tiff_of_two_pages() -> Vec<u8> {
        use tiff::encoder::{colortype, TiffEncoder};
        let mut out = Cursor::new(Vec::new());
        let mut encoder = TiffEncoder::new(&mut out).unwrap();
        encoder
            .write_image::<colortype::RGB8>(4, 2, &[10u8; 4 * 2 * 3])
            .unwrap();
        encoder
            .write_image::<colortype::Gray8>(3, 5, &[200u8; 15])
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn tiff_pages_are_read_one_by_one() {
        let bytes = tiff_of_two_pages();
        assert!(!is_animated(&bytes));
        assert_eq!(count(&bytes, 100).unwrap(), 2);
        let second = page(&bytes, 2, 1000, 1 << 20).unwrap();
        assert_eq!((second.width(), second.height()), (3, 5));
        assert_eq!(second.to_luma8().get_pixel(1, 1)[0], 200);
        assert!(page(&bytes, 3, 1000, 1 << 20).is_err());
        assert!(page(&bytes, 2, 10, 1 << 20).is_err());
        assert!(page(&bytes, 2, 1000, 4).is_err());
    }

    #[test]
    fn other_images_have_one_page() {
        assert_eq!(count(b"\x89PNG....", 10).unwrap(), 1);
        assert!(page(b"\x89PNG....", 2, 10, 10).is_err());
    }
}
