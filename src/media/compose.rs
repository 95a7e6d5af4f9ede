//! Images made of several images: a vertical sprite strip, an animated GIF, and a PDF with
//! one page per image.

use std::io::Cursor;

use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, DynamicImage, Frame, RgbaImage};

/// Pixels between the images of a sprite.
pub const SPRITE_GAP: u32 = 2;

/// Where an image is in a sprite: `(x, y, width, height)`.
pub type Place = (u32, u32, u32, u32);

/// Stacks images top to bottom (left-aligned, `SPRITE_GAP` apart); answers the strip and
/// each image's place.
pub fn sprite(images: &[DynamicImage], max_pixels: u64) -> Result<(RgbaImage, Vec<Place>), String> {
    let width = images.iter().map(|i| i.width()).max().unwrap_or(1).max(1);
    let mut height = 0u64;
    let mut places = Vec::new();
    for (n, img) in images.iter().enumerate() {
        if n > 0 {
            height += u64::from(SPRITE_GAP);
        }
        let y = u32::try_from(height).map_err(|_| "The sprite would be too tall".to_string())?;
        places.push((0, y, img.width(), img.height()));
        height += u64::from(img.height());
    }
    if u64::from(width) * height.max(1) > max_pixels {
        return Err(format!(
            "The sprite would be too large ({width}x{height}; at most {max_pixels} pixels)"
        ));
    }
    let mut canvas = RgbaImage::new(width, height.max(1) as u32);
    for (img, (x, y, _, _)) in images.iter().zip(&places) {
        image::imageops::overlay(&mut canvas, &img.to_rgba8(), i64::from(*x), i64::from(*y));
    }
    Ok((canvas, places))
}

/// An animated GIF, one frame per image (each at the top left of the largest's size).
pub fn animated_gif(images: &[DynamicImage], delay_ms: u32) -> Result<Vec<u8>, String> {
    let w = images.iter().map(|i| i.width()).max().unwrap_or(1);
    let h = images.iter().map(|i| i.height()).max().unwrap_or(1);
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 10);
        enc.set_repeat(Repeat::Infinite)
            .map_err(|e| e.to_string())?;
        for img in images {
            let mut canvas = RgbaImage::new(w, h);
            image::imageops::overlay(&mut canvas, &img.to_rgba8(), 0, 0);
            let frame = Frame::from_parts(canvas, 0, 0, Delay::from_numer_denom_ms(delay_ms, 1));
            enc.encode_frame(frame).map_err(|e| e.to_string())?;
        }
    }
    Ok(out)
}

/// A PDF with one page per image (each page the image's size, the image as JPEG).
pub fn pdf(images: &[DynamicImage]) -> Result<Vec<u8>, String> {
    let mut objects: Vec<Vec<u8>> = Vec::new();
    // 1: catalog, 2: pages; then per page: page, image, content.
    let n = images.len();
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 3 + i * 3)).collect();
    objects.push(b"<< /Type /Catalog /Pages 2 0 R >>".to_vec());
    objects.push(format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")).into_bytes());
    for (i, img) in images.iter().enumerate() {
        let (w, h) = (img.width(), img.height());
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(img.to_rgb8())
            .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .map_err(|e| e.to_string())?;
        let (image, content) = (4 + i * 3, 5 + i * 3);
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w} {h}] \
                 /Resources << /XObject << /Im{i} {image} 0 R >> >> /Contents {content} 0 R >>"
            )
            .into_bytes(),
        );
        let mut obj = format!(
            "<< /Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace /DeviceRGB \
             /BitsPerComponent 8 /Filter /DCTDecode /Length {} >>\nstream\n",
            jpeg.len()
        )
        .into_bytes();
        obj.extend_from_slice(&jpeg);
        obj.extend_from_slice(b"\nendstream");
        objects.push(obj);
        let draw = format!("q {w} 0 0 {h} 0 0 cm /Im{i} Do Q");
        objects
            .push(format!("<< /Length {} >>\nstream\n{draw}\nendstream", draw.len()).into_bytes());
    }
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, obj) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(obj);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(w, h, image::Rgba([10, 20, 30, 255])))
    }

    #[test]
    fn sprites_stack_images() {
        let (strip, places) = sprite(&[img(10, 5), img(4, 6)], 1_000_000).unwrap();
        assert_eq!((strip.width(), strip.height()), (10, 5 + SPRITE_GAP + 6));
        assert_eq!(places, vec![(0, 0, 10, 5), (0, 5 + SPRITE_GAP, 4, 6)]);
        assert!(sprite(&[img(100, 100)], 50).is_err());
    }

    #[test]
    fn gif_and_pdf_have_every_image() {
        let gif = animated_gif(&[img(4, 4), img(3, 2)], 100).unwrap();
        let decoder = image::codecs::gif::GifDecoder::new(Cursor::new(&gif)).unwrap();
        use image::AnimationDecoder;
        assert_eq!(decoder.into_frames().count(), 2);
        let pdf = pdf(&[img(4, 4), img(3, 2)]).unwrap();
        let info = crate::media::probe(Cursor::new(&pdf)).unwrap();
        assert_eq!(info.format.as_deref(), Some("pdf"));
        assert_eq!(info.pages, Some(2));
        assert_eq!((info.width, info.height), (Some(4), Some(4)));
    }
}
