//! Image headers: raster formats through `imagesize`, plus frame/page counts (GIF, WebP,
//! TIFF) and SVG dimensions read from the root element.

use std::io::{BufRead, Read, Seek, SeekFrom};

use imagesize::{Compression, ImageType};

use super::{MediaInfo, MediaKind};

fn format_of(t: ImageType) -> Option<&'static str> {
    Some(match t {
        ImageType::Png => "png",
        ImageType::Jpeg => "jpg",
        ImageType::Gif => "gif",
        ImageType::Webp => "webp",
        ImageType::Bmp => "bmp",
        ImageType::Tiff => "tiff",
        ImageType::Ico => "ico",
        ImageType::Heif(Compression::Av1) => "avif",
        ImageType::Heif(Compression::Hevc) => "heic",
        ImageType::Heif(_) => "heif",
        ImageType::Psd => "psd",
        ImageType::Jxl => "jxl",
        _ => return None,
    })
}

pub(super) fn probe_raster<R: BufRead + Seek>(
    file: &mut R,
    header: &[u8],
) -> std::io::Result<Option<MediaInfo>> {
    let Some(format) = imagesize::image_type(header).ok().and_then(format_of) else {
        return Ok(None);
    };
    file.seek(SeekFrom::Start(0))?;
    let Ok(size) = imagesize::reader_size(&mut *file) else {
        return Ok(None);
    };
    if size.width == 0 || size.height == 0 {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(0))?;
    let reader = &mut *file;
    let pages = match format {
        "gif" => gif_frames(reader).unwrap_or(1),
        "webp" => webp_frames(reader).unwrap_or(1),
        "tiff" => tiff_pages(reader).unwrap_or(1),
        _ => 1,
    };
    Ok(Some(MediaInfo {
        kind: MediaKind::Image,
        format: Some(format.to_string()),
        width: Some(size.width as i64),
        height: Some(size.height as i64),
        pages: Some(pages.max(1)),
        video: None,
    }))
}

fn read_u8<R: Read>(r: &mut R) -> std::io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn skip_sub_blocks<R: Read>(r: &mut R) -> std::io::Result<()> {
    loop {
        let len = read_u8(r)? as usize;
        if len == 0 {
            return Ok(());
        }
        std::io::copy(&mut r.take(len as u64), &mut std::io::sink())?;
    }
}

/// Counts the image descriptors of a GIF (its frames).
fn gif_frames<R: BufRead>(r: &mut R) -> std::io::Result<i64> {
    let mut hdr = [0u8; 13];
    r.read_exact(&mut hdr)?;
    if hdr[10] & 0x80 != 0 {
        let n = 3 * (1u64 << ((hdr[10] & 0x07) + 1));
        std::io::copy(&mut r.take(n), &mut std::io::sink())?;
    }
    let mut frames = 0;
    loop {
        match read_u8(r) {
            Ok(0x2C) => {
                let mut desc = [0u8; 9];
                r.read_exact(&mut desc)?;
                if desc[8] & 0x80 != 0 {
                    let n = 3 * (1u64 << ((desc[8] & 0x07) + 1));
                    std::io::copy(&mut r.take(n), &mut std::io::sink())?;
                }
                read_u8(r)?; // LZW minimum code size
                skip_sub_blocks(r)?;
                frames += 1;
            }
            Ok(0x21) => {
                read_u8(r)?;
                skip_sub_blocks(r)?;
            }
            Ok(_) | Err(_) => break,
        }
    }
    Ok(frames.max(1))
}

/// Counts the `ANMF` chunks of an animated WebP (1 for a still image).
fn webp_frames<R: Read + Seek>(r: &mut R) -> std::io::Result<i64> {
    r.seek(SeekFrom::Start(12))?;
    let mut frames = 0;
    loop {
        let mut ch = [0u8; 8];
        if r.read_exact(&mut ch).is_err() {
            break;
        }
        let len = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]) as i64;
        if &ch[0..4] == b"ANMF" {
            frames += 1;
        }
        r.seek(SeekFrom::Current(len + (len & 1)))?;
    }
    Ok(frames.max(1))
}

/// Follows the IFD chain of a TIFF file.
fn tiff_pages<R: Read + Seek>(r: &mut R) -> std::io::Result<i64> {
    let mut hdr = [0u8; 8];
    r.read_exact(&mut hdr)?;
    let le = &hdr[0..2] == b"II";
    let u16_of = |b: [u8; 2]| {
        if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let u32_of = |b: [u8; 4]| {
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut offset = u32_of([hdr[4], hdr[5], hdr[6], hdr[7]]) as u64;
    let mut pages = 0;
    let mut seen = std::collections::HashSet::new();
    while offset != 0 && pages < 10_000 && seen.insert(offset) {
        r.seek(SeekFrom::Start(offset))?;
        let mut n = [0u8; 2];
        r.read_exact(&mut n)?;
        let entries = u16_of(n) as i64;
        r.seek(SeekFrom::Current(entries * 12))?;
        let mut next = [0u8; 4];
        r.read_exact(&mut next)?;
        pages += 1;
        offset = u32_of(next) as u64;
    }
    Ok(pages.max(1))
}

/// An SVG document: `<svg` as the first element (after an XML declaration, comments or a
/// doctype). Width and height come from the attributes, else from the `viewBox`.
pub(super) fn probe_svg<R: Read + Seek>(
    file: &mut R,
    header: &[u8],
) -> std::io::Result<Option<MediaInfo>> {
    let text = String::from_utf8_lossy(header);
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if !trimmed.starts_with('<') {
        return Ok(None);
    }
    let mut buf = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    (&mut *file).take(256 * 1024).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let Some(start) = find_svg_root(&text) else {
        return Ok(None);
    };
    let tag_end = text[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(text.len());
    let tag = &text[start..tag_end];
    let view_box: Option<Vec<f64>> = attr(tag, "viewBox").map(|v| {
        v.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect()
    });
    let vb = view_box.filter(|v| v.len() == 4);
    let width = attr(tag, "width")
        .and_then(length)
        .or_else(|| vb.as_ref().map(|v| v[2]));
    let height = attr(tag, "height")
        .and_then(length)
        .or_else(|| vb.as_ref().map(|v| v[3]));
    Ok(Some(MediaInfo {
        kind: MediaKind::Image,
        format: Some("svg".into()),
        width: Some(width.map(|w| w.round() as i64).unwrap_or(0)),
        height: Some(height.map(|h| h.round() as i64).unwrap_or(0)),
        pages: Some(1),
        video: None,
    }))
}

/// The byte offset of the `<svg` root element, skipping the prolog.
fn find_svg_root(text: &str) -> Option<usize> {
    let mut i = 0;
    loop {
        let rest = text[i..].trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        i = text.len() - rest.len();
        if rest.starts_with("<svg") {
            return Some(i);
        }
        let end = if rest.starts_with("<?") {
            rest.find("?>").map(|e| e + 2)
        } else if rest.starts_with("<!--") {
            rest.find("-->").map(|e| e + 3)
        } else if rest.starts_with("<!") {
            rest.find('>').map(|e| e + 1)
        } else {
            None
        }?;
        i += end;
    }
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let mut search = tag;
    while let Some(pos) = search.find(name) {
        let before_ok = pos > 0 && search.as_bytes()[pos - 1].is_ascii_whitespace();
        let after = search[pos + name.len()..].trim_start();
        if before_ok {
            if let Some(after_eq) = after.strip_prefix('=') {
                let after_eq = after_eq.trim_start();
                let quote = after_eq.chars().next()?;
                if quote == '"' || quote == '\'' {
                    let body = &after_eq[1..];
                    return body.find(quote).map(|e| &body[..e]);
                }
            }
        }
        search = &search[pos + name.len()..];
    }
    None
}

/// A length in user units; percentages and unknown units give `None`.
fn length(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, factor) = if let Some(n) = v.strip_suffix("px") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("pt") {
        (n, 4.0 / 3.0)
    } else if let Some(n) = v.strip_suffix("in") {
        (n, 96.0)
    } else if let Some(n) = v.strip_suffix("cm") {
        (n, 96.0 / 2.54)
    } else if let Some(n) = v.strip_suffix("mm") {
        (n, 96.0 / 25.4)
    } else {
        (v, 1.0)
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .map(|n| n * factor)
        .filter(|n| *n > 0.0)
}

#[cfg(test)]
mod tests {
    use super::super::{probe, samples, MediaKind};

    fn probe_bytes(data: &[u8]) -> super::MediaInfo {
        probe(std::io::Cursor::new(data)).unwrap()
    }

    #[test]
    fn raster_formats() {
        let png = probe_bytes(&samples::png(3, 2));
        assert_eq!(png.format.as_deref(), Some("png"));
        assert_eq!(
            (png.width, png.height, png.pages),
            (Some(3), Some(2), Some(1))
        );
        let gif = probe_bytes(&samples::gif(4, 5, 3));
        assert_eq!(gif.format.as_deref(), Some("gif"));
        assert_eq!(
            (gif.width, gif.height, gif.pages),
            (Some(4), Some(5), Some(3))
        );
        let jpg = probe_bytes(&samples::jpeg_header(40, 30));
        assert_eq!(
            (jpg.format.as_deref(), jpg.width, jpg.height),
            (Some("jpg"), Some(40), Some(30))
        );
        let webp = probe_bytes(&samples::webp(12, 7, 0));
        assert_eq!(
            (webp.format.as_deref(), webp.width, webp.height, webp.pages),
            (Some("webp"), Some(12), Some(7), Some(1))
        );
        let anim = probe_bytes(&samples::webp(12, 7, 5));
        assert_eq!(anim.pages, Some(5));
        let tiff = probe_bytes(&samples::tiff(20, 10, 3));
        assert_eq!(
            (tiff.format.as_deref(), tiff.width, tiff.height, tiff.pages),
            (Some("tiff"), Some(20), Some(10), Some(3))
        );
        let ico = probe_bytes(&samples::ico(16));
        assert_eq!(
            (ico.format.as_deref(), ico.width, ico.height),
            (Some("ico"), Some(16), Some(16))
        );
        let bmp = probe_bytes(&samples::bmp(7, 9));
        assert_eq!(
            (bmp.format.as_deref(), bmp.width, bmp.height),
            (Some("bmp"), Some(7), Some(9))
        );
    }

    #[test]
    fn svg_dimensions() {
        let svg = probe_bytes(b"<?xml version=\"1.0\"?>\n<!-- c -->\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"120px\" height='80'></svg>");
        assert_eq!(svg.kind, MediaKind::Image);
        assert_eq!(
            (svg.format.as_deref(), svg.width, svg.height),
            (Some("svg"), Some(120), Some(80))
        );
        let vb =
            probe_bytes(b"<svg viewBox=\"0 0 300 150\" xmlns=\"http://www.w3.org/2000/svg\"/>");
        assert_eq!((vb.width, vb.height), (Some(300), Some(150)));
        assert_eq!(
            probe_bytes(b"<html><body>hi</body></html>").kind,
            MediaKind::Raw
        );
    }
}
