//! Matroska/WebM headers (EBML): doc type, duration (`Info`), and tracks.

use std::io::{Read, Seek, SeekFrom};

use super::VideoInfo;

const EBML: u32 = 0x1A45_DFA3;
const DOC_TYPE: u32 = 0x4282;
const SEGMENT: u32 = 0x1853_8067;
const INFO: u32 = 0x1549_A966;
const TIMECODE_SCALE: u32 = 0x2AD7B1;
const DURATION: u32 = 0x4489;
const TRACKS: u32 = 0x1654_AE6B;
const TRACK_ENTRY: u32 = 0xAE;
const TRACK_TYPE: u32 = 0x83;
const CODEC_ID: u32 = 0x86;
const VIDEO: u32 = 0xE0;
const AUDIO: u32 = 0xE1;
const PIXEL_WIDTH: u32 = 0xB0;
const PIXEL_HEIGHT: u32 = 0xBA;
const SAMPLING_FREQUENCY: u32 = 0xB5;
const CHANNELS: u32 = 0x9F;
const CLUSTER: u32 = 0x1F43_B675;

/// Elements larger than this are never read into memory.
const MAX_ELEMENT: u64 = 16 * 1024 * 1024;

fn read_vint<R: Read>(r: &mut R, keep_marker: bool) -> std::io::Result<(u64, bool)> {
    let mut first = [0u8; 1];
    r.read_exact(&mut first)?;
    let len = first[0].leading_zeros() as usize + 1;
    if len > 8 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "bad EBML vint",
        ));
    }
    let mut value = if keep_marker {
        first[0] as u64
    } else {
        (first[0] as u64) & ((1u64 << (8 - len)) - 1)
    };
    let mut all_ones = value == (1u64 << (8 - len)) - 1;
    for _ in 1..len {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        all_ones &= b[0] == 0xFF;
        value = (value << 8) | b[0] as u64;
    }
    Ok((value, all_ones && !keep_marker))
}

/// `(id, size)`; `size` is `None` for "unknown size".
fn header<R: Read>(r: &mut R) -> std::io::Result<(u32, Option<u64>)> {
    let (id, _) = read_vint(r, true)?;
    let (size, unknown) = read_vint(r, false)?;
    Ok((id as u32, if unknown { None } else { Some(size) }))
}

fn read_body<R: Read>(r: &mut R, size: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(size.min(MAX_ELEMENT) as usize);
    r.take(size.min(MAX_ELEMENT)).read_to_end(&mut buf)?;
    Ok(buf)
}

fn uint(b: &[u8]) -> u64 {
    b.iter().take(8).fold(0, |acc, x| (acc << 8) | *x as u64)
}

fn float(b: &[u8]) -> Option<f64> {
    match b.len() {
        4 => Some(f32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64),
        8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Some(f64::from_be_bytes(a))
        }
        _ => None,
    }
}

/// Children of an element already in memory: `(id, body)`.
fn children(mut data: &[u8]) -> Vec<(u32, &[u8])> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let mut cur = std::io::Cursor::new(data);
        let Ok((id, size)) = header(&mut cur) else {
            break;
        };
        let start = cur.position() as usize;
        let size = size.map(|s| s as usize).unwrap_or(data.len() - start);
        if start + size > data.len() {
            break;
        }
        out.push((id, &data[start..start + size]));
        data = &data[start + size..];
    }
    out
}

/// Returns the doc type (`webm`, `matroska`) and what the headers say.
pub(super) fn probe<R: Read + Seek>(r: &mut R) -> std::io::Result<(String, VideoInfo)> {
    let mut info = VideoInfo::default();
    let (id, size) = header(r)?;
    if id != EBML {
        return Ok((String::new(), info));
    }
    let ebml = read_body(r, size.unwrap_or(0))?;
    let doctype = children(&ebml)
        .into_iter()
        .find(|(id, _)| *id == DOC_TYPE)
        .map(|(_, b)| {
            String::from_utf8_lossy(b)
                .trim_end_matches('\0')
                .to_string()
        })
        .unwrap_or_else(|| "matroska".into());
    let (id, _) = header(r)?;
    if id != SEGMENT {
        return Ok((doctype, info));
    }
    let mut scale = 1_000_000u64;
    let mut duration = None;
    let (mut seen_info, mut seen_tracks) = (false, false);
    while !(seen_info && seen_tracks) {
        let Ok((id, size)) = header(r) else { break };
        match (id, size) {
            (INFO, Some(size)) => {
                seen_info = true;
                for (cid, body) in children(&read_body(r, size)?) {
                    match cid {
                        TIMECODE_SCALE => scale = uint(body).max(1),
                        DURATION => duration = float(body),
                        _ => {}
                    }
                }
            }
            (TRACKS, Some(size)) => {
                seen_tracks = true;
                for (cid, entry) in children(&read_body(r, size)?) {
                    if cid == TRACK_ENTRY {
                        track(entry, &mut info);
                    }
                }
            }
            (CLUSTER, _) | (_, None) => break,
            (_, Some(size)) => {
                r.seek(SeekFrom::Current(size as i64))?;
            }
        }
    }
    if let Some(d) = duration {
        info.duration = Some((d * scale as f64 / 1e9 * 1_000_000.0).round() / 1_000_000.0);
    }
    Ok((doctype, info))
}

fn codec_name(id: &str) -> String {
    match id {
        "V_VP8" => "vp8".into(),
        "V_VP9" => "vp9".into(),
        "V_AV1" => "av1".into(),
        "V_MPEG4/ISO/AVC" => "h264".into(),
        "V_MPEGH/ISO/HEVC" => "hevc".into(),
        "A_OPUS" => "opus".into(),
        "A_VORBIS" => "vorbis".into(),
        "A_AAC" => "aac".into(),
        "A_MPEG/L3" => "mp3".into(),
        "A_FLAC" => "flac".into(),
        other => other.to_lowercase(),
    }
}

fn track(entry: &[u8], info: &mut VideoInfo) {
    let items = children(entry);
    let kind = items
        .iter()
        .find(|(id, _)| *id == TRACK_TYPE)
        .map(|(_, b)| uint(b));
    let codec = items
        .iter()
        .find(|(id, _)| *id == CODEC_ID)
        .map(|(_, b)| codec_name(String::from_utf8_lossy(b).trim_end_matches('\0')));
    match kind {
        Some(1) if !info.has_video => {
            info.has_video = true;
            info.video_codec = codec;
            if let Some((_, v)) = items.iter().find(|(id, _)| *id == VIDEO) {
                for (id, b) in children(v) {
                    match id {
                        PIXEL_WIDTH => info.width = Some(uint(b) as i64),
                        PIXEL_HEIGHT => info.height = Some(uint(b) as i64),
                        _ => {}
                    }
                }
            }
        }
        Some(2) if !info.has_audio => {
            info.has_audio = true;
            info.audio_codec = codec;
            if let Some((_, a)) = items.iter().find(|(id, _)| *id == AUDIO) {
                for (id, b) in children(a) {
                    match id {
                        SAMPLING_FREQUENCY => info.audio_frequency = float(b).map(|f| f as i64),
                        CHANNELS => info.audio_channels = Some(uint(b) as i64),
                        _ => {}
                    }
                }
            }
        }
        _ => {}
    }
}
