//! ISO base media (MP4, MOV, 3GP, M4A) headers: duration from `mvhd`, and per track the
//! handler, codec, dimensions, rotation, sample count and audio settings.

use std::io::{Read, Seek, SeekFrom};

use super::VideoInfo;

/// The `moov` box is read into memory up to this size.
const MAX_MOOV: u64 = 64 * 1024 * 1024;

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

/// Iterates the boxes inside `data`: `(type, body)`.
fn boxes(data: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i + 8 <= data.len() {
        let size32 = be_u32(data, i).unwrap_or(0) as u64;
        let mut typ = [0u8; 4];
        typ.copy_from_slice(&data[i + 4..i + 8]);
        let (size, header) = match size32 {
            0 => ((data.len() - i) as u64, 8usize),
            1 => match be_u64(data, i + 8) {
                Some(s) => (s, 16),
                None => break,
            },
            s => (s, 8),
        };
        if size < header as u64 || (i as u64).saturating_add(size) > data.len() as u64 {
            break;
        }
        out.push((typ, &data[i + header..i + size as usize]));
        i += size as usize;
    }
    out
}

fn child<'a>(data: &'a [u8], name: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(data)
        .into_iter()
        .find(|(t, _)| t == name)
        .map(|(_, b)| b)
}

/// Finds the top-level `moov` box and reads it.
fn read_moov<R: Read + Seek>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let end = r.seek(SeekFrom::End(0))?;
    let mut pos = 0u64;
    while pos.saturating_add(8) <= end {
        r.seek(SeekFrom::Start(pos))?;
        let mut h = [0u8; 16];
        r.read_exact(&mut h[..8])?;
        let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
        let (size, header) = match size32 {
            0 => (end - pos, 8u64),
            1 => {
                r.read_exact(&mut h[8..16])?;
                let mut a = [0u8; 8];
                a.copy_from_slice(&h[8..16]);
                (u64::from_be_bytes(a), 16)
            }
            s => (s, 8),
        };
        if size < header {
            return Ok(None);
        }
        if &h[4..8] == b"moov" {
            let len = (size - header).min(MAX_MOOV);
            let mut body = Vec::with_capacity(len as usize);
            r.take(len).read_to_end(&mut body)?;
            return Ok(Some(body));
        }
        // A size beyond the file ends the walk (no wrap-around).
        pos = match pos.checked_add(size) {
            Some(p) => p,
            None => return Ok(None),
        };
    }
    Ok(None)
}

fn codec_name(fourcc: &[u8]) -> String {
    match fourcc {
        b"avc1" | b"avc3" => "h264".into(),
        b"hvc1" | b"hev1" => "hevc".into(),
        b"vp08" => "vp8".into(),
        b"vp09" => "vp9".into(),
        b"av01" => "av1".into(),
        b"mp4v" => "mpeg4".into(),
        b"mp4a" => "aac".into(),
        b"Opus" => "opus".into(),
        b".mp3" => "mp3".into(),
        b"ac-3" => "ac3".into(),
        b"ec-3" => "eac3".into(),
        b"alac" => "alac".into(),
        b"fLaC" => "flac".into(),
        other => String::from_utf8_lossy(other).trim().to_lowercase(),
    }
}

/// Reads what the headers say; missing pieces stay `None`.
pub(super) fn probe<R: Read + Seek>(r: &mut R) -> std::io::Result<VideoInfo> {
    let mut info = VideoInfo::default();
    let Some(moov) = read_moov(r)? else {
        return Ok(info);
    };
    if let Some(mvhd) = child(&moov, b"mvhd") {
        let (timescale, duration) = if mvhd.first() == Some(&1) {
            (be_u32(mvhd, 20), be_u64(mvhd, 24))
        } else {
            (be_u32(mvhd, 12), be_u32(mvhd, 16).map(u64::from))
        };
        if let (Some(ts), Some(d)) = (timescale, duration) {
            if ts > 0 && d != u64::MAX && d != u32::MAX as u64 {
                info.duration = Some(round3(d as f64 / ts as f64));
            }
        }
    }
    for (typ, trak) in boxes(&moov) {
        if &typ != b"trak" {
            continue;
        }
        let Some(mdia) = child(trak, b"mdia") else {
            continue;
        };
        let handler = child(mdia, b"hdlr")
            .and_then(|h| h.get(8..12))
            .unwrap_or(b"    ");
        let mdhd = child(mdia, b"mdhd");
        let (ts, dur) = match mdhd {
            Some(m) if m.first() == Some(&1) => (be_u32(m, 20), be_u64(m, 24)),
            Some(m) => (be_u32(m, 12), be_u32(m, 16).map(u64::from)),
            None => (None, None),
        };
        let stbl = child(mdia, b"minf").and_then(|m| child(m, b"stbl"));
        let entry = stbl
            .and_then(|s| child(s, b"stsd"))
            .and_then(|s| s.get(8..));
        let fourcc = entry.and_then(|e| e.get(4..8));
        let samples = stbl
            .and_then(|s| child(s, b"stsz"))
            .and_then(|s| be_u32(s, 8));
        match handler {
            b"vide" if !info.has_video => {
                info.has_video = true;
                info.video_codec = fourcc.map(codec_name);
                if let Some(tkhd) = child(trak, b"tkhd") {
                    // The matrix {a, b, u, c, d, v, x, y, w}; width and height follow it.
                    let matrix = if tkhd.first() == Some(&1) { 52 } else { 40 };
                    let a = be_u32(tkhd, matrix).map(|v| v as i32);
                    let b = be_u32(tkhd, matrix + 4).map(|v| v as i32);
                    info.rotation = match (a, b) {
                        (Some(0), Some(b)) if b > 0 => 90,
                        (Some(a), Some(0)) if a < 0 => 180,
                        (Some(0), Some(b)) if b < 0 => 270,
                        _ => 0,
                    };
                    let w = be_u32(tkhd, matrix + 36).map(|v| (v >> 16) as i64);
                    let h = be_u32(tkhd, matrix + 40).map(|v| (v >> 16) as i64);
                    info.width = w.filter(|w| *w > 0);
                    info.height = h.filter(|h| *h > 0);
                }
                if info.width.is_none() {
                    // The visual sample entry carries the coded size too.
                    info.width = entry.and_then(|e| be_u16(e, 32)).map(i64::from);
                    info.height = entry.and_then(|e| be_u16(e, 34)).map(i64::from);
                }
                info.nb_frames = samples.map(i64::from).filter(|n| *n > 0);
                if let (Some(n), Some(ts), Some(d)) = (info.nb_frames, ts, dur) {
                    if ts > 0 && d > 0 {
                        info.frame_rate = Some(n as f64 * ts as f64 / d as f64);
                    }
                }
            }
            b"soun" if !info.has_audio => {
                info.has_audio = true;
                info.audio_codec = fourcc.map(codec_name);
                // Audio sample entry: channel count at 24, sample rate (16.16) at 32.
                info.audio_channels = entry
                    .and_then(|e| be_u16(e, 24))
                    .map(i64::from)
                    .filter(|c| *c > 0);
                info.audio_frequency = entry
                    .and_then(|e| be_u32(e, 32))
                    .map(|v| (v >> 16) as i64)
                    .filter(|f| *f > 0);
            }
            _ => {}
        }
    }
    Ok(info)
}

fn round3(v: f64) -> f64 {
    (v * 1_000_000.0).round() / 1_000_000.0
}
