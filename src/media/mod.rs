//! Probing stored files: what kind of media a file is and its dimensions, read from headers
//! without decoding pixels or frames.

pub mod analysis;
pub mod avif_encode;
pub mod breakpoints;
pub mod compose;
mod image;
mod mp4;
pub mod pages;
pub mod text;
pub mod transform;
pub mod video;
mod webm;
pub mod webp_encode;

use std::io::{BufReader, Read, Seek, SeekFrom};

use serde_json::{json, Map, Value};

/// The resource type a file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
    Raw,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Raw => "raw",
        }
    }
}

/// Audio/video details of a video-type file (all optional: containers without them still count).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VideoInfo {
    pub duration: Option<f64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub audio_frequency: Option<i64>,
    pub audio_channels: Option<i64>,
    pub frame_rate: Option<f64>,
    pub nb_frames: Option<i64>,
    pub rotation: i64,
    /// Whether the file has an audio track.
    pub has_audio: bool,
    /// Whether the file has a video track.
    pub has_video: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    pub kind: MediaKind,
    pub format: Option<String>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub pages: Option<i64>,
    pub video: Option<VideoInfo>,
}

impl MediaInfo {
    fn raw() -> MediaInfo {
        MediaInfo {
            kind: MediaKind::Raw,
            format: None,
            width: None,
            height: None,
            pages: None,
            video: None,
        }
    }

    /// The video fields of an upload response (Cloudinary's shape: `bit_rate` strings inside
    /// `video`/`audio`, an integer at the top level, `audio: {}` without an audio track).
    pub fn video_fields(&self, bytes: i64) -> Map<String, Value> {
        let mut m = Map::new();
        let Some(v) = &self.video else { return m };
        let bit_rate = v
            .duration
            .filter(|d| *d > 0.0)
            .map(|d| ((bytes as f64) * 8.0 / d).round() as i64);
        let mut video = Map::new();
        if let Some(c) = &v.video_codec {
            video.insert("codec".into(), json!(c));
        }
        if v.has_video {
            if let (Some(w), Some(h)) = (v.width, v.height) {
                if w > 0 && h > 0 {
                    let g = gcd(w, h);
                    video.insert("dar".into(), json!(format!("{}:{}", w / g, h / g)));
                }
            }
        }
        let mut audio = Map::new();
        if let Some(c) = &v.audio_codec {
            audio.insert("codec".into(), json!(c));
        }
        if let Some(f) = v.audio_frequency {
            audio.insert("frequency".into(), json!(f));
        }
        if let Some(c) = v.audio_channels {
            audio.insert("channels".into(), json!(c));
            let layout = match c {
                1 => Some("mono"),
                2 => Some("stereo"),
                _ => None,
            };
            if let Some(l) = layout {
                audio.insert("channel_layout".into(), json!(l));
            }
        }
        m.insert("audio".into(), Value::Object(audio));
        m.insert("video".into(), Value::Object(video));
        m.insert("is_audio".into(), json!(v.has_audio && !v.has_video));
        if let Some(fr) = v.frame_rate {
            m.insert("frame_rate".into(), json!(fr));
        }
        if let Some(b) = bit_rate {
            m.insert("bit_rate".into(), json!(b));
        }
        if let Some(d) = v.duration {
            m.insert("duration".into(), json!(d));
        }
        m.insert("rotation".into(), json!(v.rotation));
        if let Some(n) = v.nb_frames {
            m.insert("nb_frames".into(), json!(n));
        }
        m
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

/// Reads up to `n` bytes from the start of `file`.
fn head<R: Read + Seek>(file: &mut R, n: usize) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::with_capacity(n);
    (&mut *file).take(n as u64).read_to_end(&mut buf)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(buf)
}

/// Identifies content by its bytes (a cursor over memory, or a file behind a `BufReader`: the
/// readers take their bytes where they lie).
pub fn probe<R: std::io::BufRead + Seek>(mut file: R) -> std::io::Result<MediaInfo> {
    let header = head(&mut file, 4096)?;
    if header.is_empty() {
        return Ok(MediaInfo::raw());
    }
    if let Some(info) = image::probe_raster(&mut file, &header)? {
        return Ok(info);
    }
    if let Some((format, v)) = probe_video(&mut file, &header)? {
        let (w, h) = (v.width, v.height);
        return Ok(MediaInfo {
            kind: MediaKind::Video,
            format: Some(format),
            width: w,
            height: h,
            pages: Some(0),
            video: Some(v),
        });
    }
    if let Some(info) = image::probe_svg(&mut file, &header)? {
        return Ok(info);
    }
    if header.starts_with(b"%PDF-") {
        return probe_pdf(&mut file);
    }
    Ok(MediaInfo::raw())
}

/// PDFs are images with pages (as at Cloudinary): the first `/MediaBox` gives the size, the
/// `/Type /Page` objects the page count (both read from the first 8 MiB).
fn probe_pdf<R: Read + Seek>(file: &mut R) -> std::io::Result<MediaInfo> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::new();
    file.take(8 * 1024 * 1024).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let size = text.find("/MediaBox").and_then(|i| {
        let rest = &text[i + 9..];
        let open = rest.find('[')?;
        let close = rest.find(']')?;
        let nums: Vec<f64> = rest
            .get(open + 1..close)?
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        let (w, h) = (
            (nums.get(2)? - nums.first()?).abs(),
            (nums.get(3)? - nums.get(1)?).abs(),
        );
        // Sizes beyond any real page are not believed.
        (nums.len() == 4 && w.is_finite() && h.is_finite() && w <= 1e6 && h <= 1e6)
            .then(|| (w.round() as i64, h.round() as i64))
    });
    let pages = text
        .match_indices("/Type")
        .filter(|(i, _)| {
            let after = text[i + 5..].trim_start();
            after.starts_with("/Page") && !after.starts_with("/Pages")
        })
        .count() as i64;
    Ok(MediaInfo {
        kind: MediaKind::Image,
        format: Some("pdf".into()),
        width: size.map(|s| s.0),
        height: size.map(|s| s.1),
        pages: Some(pages.max(1)),
        video: None,
    })
}

fn probe_video<R: Read + Seek>(
    file: &mut R,
    header: &[u8],
) -> std::io::Result<Option<(String, VideoInfo)>> {
    if header.len() >= 12 && &header[4..8] == b"ftyp" {
        let brand = &header[8..12];
        let format = match brand {
            b"qt  " => "mov",
            b"M4A " | b"M4B " => "m4a",
            b"3gp4" | b"3gp5" | b"3gp6" | b"3g2a" => "3gp",
            _ => "mp4",
        };
        let mut reader = BufReader::new(&mut *file);
        let info = mp4::probe(&mut reader).unwrap_or_default();
        return Ok(Some((format.to_string(), info)));
    }
    if header.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        let mut reader = BufReader::new(&mut *file);
        let (doctype, info) = webm::probe(&mut reader).unwrap_or_default();
        let format = if doctype == "matroska" { "mkv" } else { "webm" };
        return Ok(Some((format.to_string(), info)));
    }
    let audio = |codec: &str| VideoInfo {
        audio_codec: Some(codec.to_string()),
        has_audio: true,
        ..Default::default()
    };
    let found = if header.len() >= 12 && &header[0..4] == b"RIFF" && &header[8..12] == b"AVI " {
        Some((
            "avi",
            VideoInfo {
                has_video: true,
                ..Default::default()
            },
        ))
    } else if header.len() >= 12 && &header[0..4] == b"RIFF" && &header[8..12] == b"WAVE" {
        Some(("wav", audio("pcm")))
    } else if header.starts_with(b"OggS") {
        if header.windows(6).any(|w| w == b"theora") {
            Some((
                "ogv",
                VideoInfo {
                    video_codec: Some("theora".into()),
                    has_video: true,
                    ..Default::default()
                },
            ))
        } else if header.windows(4).any(|w| w == b"Opus") {
            Some(("ogg", audio("opus")))
        } else {
            Some(("ogg", audio("vorbis")))
        }
    } else if header.starts_with(b"fLaC") {
        Some(("flac", audio("flac")))
    } else if header.starts_with(b"ID3")
        || (header.len() >= 2 && header[0] == 0xFF && (header[1] & 0xE6) == 0xE2)
    {
        Some(("mp3", audio("mp3")))
    } else if header.starts_with(b"FLV\x01") {
        Some((
            "flv",
            VideoInfo {
                has_video: true,
                ..Default::default()
            },
        ))
    } else {
        None
    };
    Ok(found.map(|(f, v)| (f.to_string(), v)))
}

#[doc(hidden)]
pub mod samples;

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_bytes(data: &[u8]) -> MediaInfo {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, data).unwrap();
        let from_file = probe(BufReader::new(std::fs::File::open(&p).unwrap())).unwrap();
        assert_eq!(from_file, probe(std::io::Cursor::new(data)).unwrap());
        from_file
    }

    #[test]
    fn detects_video_containers() {
        let mp4 = samples::mp4(640, 360, 3.5, b"isom");
        let info = probe_bytes(&mp4);
        assert_eq!(info.kind, MediaKind::Video);
        assert_eq!(info.format.as_deref(), Some("mp4"));
        assert_eq!((info.width, info.height), (Some(640), Some(360)));
        let v = info.video.unwrap();
        assert_eq!(v.duration, Some(3.5));
        assert_eq!(v.video_codec.as_deref(), Some("h264"));
        let mov = probe_bytes(&samples::mp4(320, 240, 1.0, b"qt  "));
        assert_eq!(mov.format.as_deref(), Some("mov"));
        let webm = probe_bytes(&samples::webm(1280, 720, 2.25));
        assert_eq!(webm.format.as_deref(), Some("webm"));
        assert_eq!((webm.width, webm.height), (Some(1280), Some(720)));
        assert_eq!(webm.video.unwrap().duration, Some(2.25));
        assert_eq!(probe_bytes(b"just some text").kind, MediaKind::Raw);
    }
}
