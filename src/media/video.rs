//! Pictures from videos: the poster image (`.jpg`/`.png`/`.webp` of a video public ID — the
//! middle frame, or `so_`) and the animated preview (`.gif`, `vs_` frames spread over `so_`…`eo_`
//! or `du_`, `dl_` milliseconds apart). MP4/MOV files with H.264 video (demuxed by `re_mp4`,
//! decoded by `rust_h264`) and WebM files with VP9 video (`matroska-demuxer`, `rusty_vp9`) or
//! VP8 video (keyframes only, through the WebP decoder: a VP8 keyframe is a lossy WebP's
//! payload); all pure Rust. Bounded: the picture size by the pixel limit, the frames made by
//! four times it, the samples decoded per picture.

use std::io::Cursor;

use image::{Delay, DynamicImage, Frame, RgbImage};
use re_mp4::{Mp4, StsdBoxContent};

use super::transform::{self, Plan};

/// Frames of an animated preview at most.
pub const MAX_FRAMES: u32 = 100;
/// Frames of a preview when `vs_` does not say.
const DEFAULT_FRAMES: u32 = 10;
/// Samples decoded for one picture or preview at most, all pictures together.
const MAX_DECODED: usize = 1200;

/// `so_`, `eo_`, `du_`, `vs_`, `dl_`: which part of a video, how many frames, how fast.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VideoOptions {
    pub start: Option<Offset>,
    pub end: Option<Offset>,
    pub duration: Option<Offset>,
    pub frames: Option<u32>,
    pub delay_ms: Option<u32>,
}

/// Seconds, or a percentage of the video (`so_50p`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Offset {
    Seconds(f64),
    Percent(f64),
}

impl Offset {
    pub fn parse(v: &str) -> Option<Offset> {
        let (n, pct) = match v.strip_suffix('p') {
            Some(n) => (n, true),
            None => (v, false),
        };
        let n: f64 = n
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
        Some(if pct {
            Offset::Percent(n.min(100.0))
        } else {
            Offset::Seconds(n)
        })
    }

    fn seconds(self, duration: f64) -> f64 {
        match self {
            Offset::Seconds(s) => s,
            Offset::Percent(p) => duration * p / 100.0,
        }
    }
}

/// What pictures are made from: a decodable video track.
trait Source {
    /// Seconds.
    fn duration(&self) -> f64;
    /// The display times of the frames, seconds, ascending.
    fn times(&self) -> Vec<f64>;
    /// The pictures at the wanted times (each one of `times()`, ascending).
    fn pictures(&self, wanted: &[f64], limit: FrameLimit) -> Result<Vec<RgbImage>, String>;
}

/// What decoding a video may take: pictures of at most `pixels` (bounded by the size probed
/// at upload, not by what the stream itself says), and the decoder's pictures together at
/// most `decode_bytes`.
#[derive(Debug, Clone, Copy)]
struct FrameLimit {
    pixels: u64,
    decode_bytes: u64,
}

impl FrameLimit {
    /// Twice the probed picture (sides rounded up to macroblocks; the stored size may be the
    /// shown one, after the pixel aspect ratio), within `max_pixels`; `max_pixels` when the
    /// size is unknown.
    fn new(max_pixels: u64, dims: (u64, u64), decode_bytes: u64) -> FrameLimit {
        let up = |n: u64| n.div_ceil(16) * 16;
        let pixels = if dims.0 > 0 && dims.1 > 0 {
            max_pixels.min(up(dims.0).saturating_mul(up(dims.1)).saturating_mul(2))
        } else {
            max_pixels
        };
        FrameLimit {
            pixels,
            decode_bytes,
        }
    }
}

/// Pictures an H.264 decoder holds back to give them in display order.
const H264_REORDER_DEPTH: usize = 4;

/// The H.264 track of an MP4/MOV file.
struct Track<'a> {
    bytes: &'a [u8],
    avcc: Vec<u8>,
    samples: Vec<re_mp4::Sample>,
    timescale: f64,
}

fn unsupported() -> String {
    "Video pictures are made from MP4/MOV files with H.264 video only".to_string()
}

/// Refuses sample tables that claim more samples than the file could hold: the demuxer would
/// build a list that large before anything else is checked.
fn check_sample_counts(bytes: &[u8]) -> Result<(), String> {
    let most = (bytes.len() as u64).min(2_000_000);
    let mut from = 0;
    while let Some(pos) = bytes[from..]
        .windows(4)
        .position(|w| w == b"stsz" || w == b"stts")
    {
        let at = from + pos;
        let field = |offset: usize| -> Option<u64> {
            bytes
                .get(at + offset..at + offset + 4)
                .map(|b| u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
        };
        // stsz: version/flags, sample size, sample count; stts: version/flags, entry count,
        // then (count, delta) pairs.
        let claimed = if &bytes[at..at + 4] == b"stsz" {
            field(12).unwrap_or(0)
        } else {
            let entries = field(8).unwrap_or(0).min(1_000_000);
            (0..entries)
                .map_while(|i| field(12 + 8 * i as usize))
                .fold(0u64, u64::saturating_add)
        };
        if claimed > most {
            return Err(format!(
                "The video claims {claimed} frames, more than it can hold"
            ));
        }
        from = at + 4;
    }
    Ok(())
}

impl<'a> Track<'a> {
    fn open(bytes: &'a [u8]) -> Result<Track<'a>, String> {
        check_sample_counts(bytes)?;
        let mp4 = Mp4::read(Cursor::new(bytes), bytes.len() as u64)
            .map_err(|e| format!("Cannot read the video: {e}"))?;
        let track = mp4
            .tracks()
            .values()
            .find(|t| {
                matches!(
                    t.trak(&mp4).mdia.minf.stbl.stsd.contents,
                    StsdBoxContent::Avc1(_)
                )
            })
            .ok_or_else(unsupported)?;
        let avcc = track
            .raw_codec_config(&mp4)
            .ok_or_else(|| "The video has no H.264 configuration (avcC)".to_string())?;
        if track.samples.is_empty() {
            return Err("The video has no frames".into());
        }
        Ok(Track {
            bytes,
            avcc,
            samples: track.samples.clone(),
            timescale: (track.timescale as f64).max(1.0),
        })
    }

    fn duration(&self) -> f64 {
        self.samples
            .iter()
            .map(|s| s.composition_timestamp + s.duration as i64)
            .max()
            .unwrap_or(0) as f64
            / self.timescale
    }

    fn sample(&self, i: usize) -> Result<&'a [u8], String> {
        let s = &self.samples[i];
        let start = usize::try_from(s.offset).map_err(|_| "Corrupt video".to_string())?;
        let end = start
            .checked_add(s.size as usize)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| "Corrupt video: a frame lies outside the file".to_string())?;
        Ok(&self.bytes[start..end])
    }

    /// The keyframe to decode from to show the picture at `target`.
    fn keyframe_before(&self, target: i64) -> usize {
        (0..self.samples.len())
            .rev()
            .find(|&i| self.samples[i].is_sync && self.samples[i].composition_timestamp <= target)
            .unwrap_or(0)
    }

    /// The pictures at the wanted composition times (each one a frame's time, ascending).
    fn pictures(&self, wanted: &[i64], limit: FrameLimit) -> Result<Vec<RgbImage>, String> {
        use rust_h264::decoder::OrderedDecoder;
        use rust_h264::nal::{parse_avcc, parse_avcc_config};
        let cfg = parse_avcc_config(&self.avcc).map_err(|e| format!("Corrupt video: {e:?}"))?;
        let mut found: std::collections::HashMap<i64, RgbImage> = Default::default();
        let mut decoded_total = 0usize;
        let mut i = 0;
        while i < wanted.len() {
            // The wanted pictures that share a keyframe are made by one decoding run.
            let key = self.keyframe_before(wanted[i]);
            let mut j = i;
            while j < wanted.len() && self.keyframe_before(wanted[j]) == key {
                j += 1;
            }
            let group = &wanted[i..j];
            let last = group[group.len() - 1];
            let mut dec = OrderedDecoder::<i64>::with_max_depth(H264_REORDER_DEPTH);
            for n in cfg.sps_nals.iter().chain(&cfg.pps_nals) {
                check_sps(n, limit)?;
                dec.decode_nal_with_meta(n, i64::MIN)
                    .map_err(|e| format!("Corrupt video: {e:?}"))?;
            }
            let mut keep = |frame: rust_h264::decoder::Frame, cts: i64| -> Result<bool, String> {
                if u64::from(frame.width) * u64::from(frame.height) > limit.pixels {
                    return Err(format!(
                        "The video is too large to make pictures of ({}x{})",
                        frame.width, frame.height
                    ));
                }
                if group.contains(&cts) {
                    found.insert(cts, to_rgb(&frame)?);
                }
                Ok(cts >= last)
            };
            let mut done = false;
            for s in key..self.samples.len() {
                transform::check_deadline()?;
                decoded_total += 1;
                if done || decoded_total > MAX_DECODED {
                    break;
                }
                let cts = self.samples[s].composition_timestamp;
                for nal in parse_avcc(self.sample(s)?, cfg.length_size) {
                    check_sps(&nal, limit)?;
                    // A damaged unit is skipped; the next keyframe recovers.
                    if let Ok(frames) = dec.decode_nal_with_meta(&nal, cts) {
                        for (frame, c) in frames {
                            done |= keep(frame, c)?;
                        }
                    }
                }
            }
            if !done {
                for (frame, c) in dec.flush_with_meta() {
                    keep(frame, c)?;
                }
            }
            i = j;
        }
        // A picture that could not be decoded takes the nearest one before it that could.
        let mut out = Vec::with_capacity(wanted.len());
        let mut previous: Option<RgbImage> = None;
        for t in wanted {
            match found.remove(t).or_else(|| previous.clone()) {
                Some(p) => {
                    previous = Some(p.clone());
                    out.push(p);
                }
                None => continue,
            }
        }
        if out.is_empty() {
            return Err("No picture could be decoded from the video".into());
        }
        Ok(out)
    }
}

impl Source for Track<'_> {
    fn duration(&self) -> f64 {
        Track::duration(self)
    }

    fn times(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self
            .samples
            .iter()
            .map(|s| s.composition_timestamp as f64 / self.timescale)
            .collect();
        t.sort_by(f64::total_cmp);
        t
    }

    fn pictures(&self, wanted: &[f64], limit: FrameLimit) -> Result<Vec<RgbImage>, String> {
        let ticks: Vec<i64> = wanted
            .iter()
            .map(|t| (t * self.timescale).round() as i64)
            .collect();
        Track::pictures(self, &ticks, limit)
    }
}

/// A WebM file's video track, its frames read into memory.
struct WebmTrack {
    vp9: bool,
    /// (seconds, keyframe, data), in file order.
    frames: Vec<(f64, bool, Vec<u8>)>,
    duration: f64,
}

/// Frames of a WebM video read at most.
const MAX_WEBM_FRAMES: usize = 20_000;

impl WebmTrack {
    fn open(bytes: &[u8], max_pixels: u64) -> Result<WebmTrack, String> {
        use matroska_demuxer::{Frame as MkvFrame, MatroskaFile, TrackType};
        let mut mkv = MatroskaFile::open(Cursor::new(bytes))
            .map_err(|e| format!("Cannot read the video: {e}"))?;
        let scale = mkv.info().timestamp_scale().get() as f64;
        let (number, codec) = mkv
            .tracks()
            .iter()
            .find(|t| t.track_type() == TrackType::Video)
            .map(|t| {
                let v = t.video();
                let px = v.map_or(0, |v| v.pixel_width().get() * v.pixel_height().get());
                (t.track_number().get(), t.codec_id().to_string(), px)
            })
            .map(|(n, c, px)| {
                if px > max_pixels {
                    Err(format!(
                        "The video is too large to make pictures of ({px} pixels)"
                    ))
                } else {
                    Ok((n, c))
                }
            })
            .ok_or_else(|| "The video has no video track".to_string())??;
        let vp9 = match codec.as_str() {
            "V_VP9" => true,
            "V_VP8" => false,
            other => {
                return Err(format!(
                    "Pictures of {other} videos are not made (VP8, VP9 and H.264 are)"
                ))
            }
        };
        let mut frames = Vec::new();
        let mut f = MkvFrame::default();
        while mkv
            .next_frame(&mut f)
            .map_err(|e| format!("Cannot read the video: {e}"))?
        {
            if f.track == number {
                if frames.len() == MAX_WEBM_FRAMES {
                    break;
                }
                frames.push((
                    f.timestamp as f64 * scale / 1e9,
                    f.is_keyframe.unwrap_or(false),
                    std::mem::take(&mut f.data),
                ));
            }
        }
        if frames.is_empty() {
            return Err("The video has no frames".into());
        }
        let duration = mkv
            .info()
            .duration()
            .map(|d| d * scale / 1e9)
            .unwrap_or_else(|| frames.iter().map(|f| f.0).fold(0.0, f64::max));
        Ok(WebmTrack {
            vp9,
            frames,
            duration,
        })
    }

    fn keyframe_before(&self, index: usize) -> Option<usize> {
        (0..=index).rev().find(|&i| self.frames[i].1)
    }

    /// The frame shown at a time: the last one at or before it.
    fn index_at(&self, t: f64) -> usize {
        self.frames
            .iter()
            .rposition(|f| f.0 <= t + 1e-9)
            .unwrap_or(0)
    }
}

impl Source for WebmTrack {
    fn duration(&self) -> f64 {
        self.duration
    }

    fn times(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self.frames.iter().map(|f| f.0).collect();
        t.sort_by(f64::total_cmp);
        t
    }

    fn pictures(&self, wanted: &[f64], limit: FrameLimit) -> Result<Vec<RgbImage>, String> {
        let mut out = Vec::with_capacity(wanted.len());
        if !self.vp9 {
            // VP8: the keyframe at or before each time, decoded as a lossy WebP.
            for t in wanted {
                let k = self
                    .keyframe_before(self.index_at(*t))
                    .ok_or_else(|| "The video has no keyframe".to_string())?;
                let frame = &self.frames[k].2;
                let pad = frame.len() & 1;
                let mut webp = Vec::with_capacity(frame.len() + 21);
                webp.extend_from_slice(b"RIFF");
                webp.extend_from_slice(&((12 + frame.len() + pad) as u32).to_le_bytes());
                webp.extend_from_slice(b"WEBPVP8 ");
                webp.extend_from_slice(&(frame.len() as u32).to_le_bytes());
                webp.extend_from_slice(frame);
                if pad == 1 {
                    webp.push(0);
                }
                let mut reader =
                    image::ImageReader::with_format(Cursor::new(webp), image::ImageFormat::WebP);
                let mut limits = image::Limits::default();
                limits.max_alloc = Some(limit.pixels.saturating_mul(4));
                reader.limits(limits);
                let img = reader
                    .decode()
                    .map_err(|e| format!("Cannot decode the video frame: {e}"))?;
                out.push(img.to_rgb8());
            }
            return Ok(out);
        }
        // VP9: decoded from the keyframe before each wanted frame up to it (frames that share
        // a keyframe in one run).
        let targets: Vec<usize> = wanted.iter().map(|t| self.index_at(*t)).collect();
        let mut decoded_total = 0usize;
        let mut i = 0;
        while i < targets.len() {
            let key = self.keyframe_before(targets[i]).unwrap_or(0);
            let mut j = i;
            while j < targets.len() && self.keyframe_before(targets[j]).unwrap_or(0) == key {
                j += 1;
            }
            let group = &targets[i..j];
            let last = group[group.len() - 1];
            let mut dec = rusty_vp9::Vp9Decoder::new();
            let mut sizes = Vp9Sizes::default();
            let mut shown: std::collections::HashMap<usize, RgbImage> = Default::default();
            for index in key..=last {
                transform::check_deadline()?;
                decoded_total += 1;
                if decoded_total > MAX_DECODED {
                    break;
                }
                sizes.check(&self.frames[index].2, limit)?;
                if dec.push(&self.frames[index].2, Some(index as i64)).is_err() {
                    continue;
                }
                while let Ok(frame) = dec.next_frame() {
                    let pts = frame.pts.unwrap_or(index as i64) as usize;
                    if group.contains(&pts) {
                        let (w, h) = (frame.width as usize, frame.height as usize);
                        if (w as u64) * (h as u64) > limit.pixels {
                            return Err(format!(
                                "The video is too large to make pictures of ({w}x{h})"
                            ));
                        }
                        if frame.bit_depth != 8
                            || frame.subsampling_x != 1
                            || frame.subsampling_y != 1
                        {
                            return Err("Only 8-bit 4:2:0 videos can be made into pictures".into());
                        }
                        shown.insert(
                            pts,
                            yuv_to_rgb(
                                w,
                                h,
                                (&frame.planes[0], frame.strides[0]),
                                (&frame.planes[1], frame.strides[1]),
                                (&frame.planes[2], frame.strides[2]),
                            )?,
                        );
                    }
                }
            }
            for t in group {
                match shown.get(t) {
                    Some(p) => out.push(p.clone()),
                    None => {
                        if let Some(p) = out.last().cloned() {
                            out.push(p);
                        }
                    }
                }
            }
            i = j;
        }
        if out.is_empty() {
            return Err("No picture could be decoded from the video".into());
        }
        Ok(out)
    }
}

/// BT.601 limited-range 4:2:0 planes (with strides) to RGB.
fn yuv_to_rgb(
    w: usize,
    h: usize,
    (y, ys): (&[u8], usize),
    (u, us): (&[u8], usize),
    (v, vs): (&[u8], usize),
) -> Result<RgbImage, String> {
    let ch = h.div_ceil(2);
    let cw = w.div_ceil(2);
    if ys < w
        || us < cw
        || vs < cw
        || y.len() < ys * (h - 1) + w
        || u.len() < us * (ch - 1) + cw
        || v.len() < vs * (ch - 1) + cw
    {
        return Err("Corrupt video frame".into());
    }
    let mut out = vec![0u8; w * h * 3];
    for row in 0..h {
        for col in 0..w {
            let c = (i32::from(y[row * ys + col]) - 16) * 298;
            let d = i32::from(u[(row / 2) * us + col / 2]) - 128;
            let e = i32::from(v[(row / 2) * vs + col / 2]) - 128;
            let o = (row * w + col) * 3;
            out[o] = ((c + 409 * e + 128) >> 8).clamp(0, 255) as u8;
            out[o + 1] = ((c - 100 * d - 208 * e + 128) >> 8).clamp(0, 255) as u8;
            out[o + 2] = ((c + 516 * d + 128) >> 8).clamp(0, 255) as u8;
        }
    }
    RgbImage::from_raw(w as u32, h as u32, out).ok_or_else(|| "Corrupt video frame".into())
}

/// BT.601 limited-range 4:2:0 to RGB.
fn to_rgb(frame: &rust_h264::decoder::Frame) -> Result<RgbImage, String> {
    if frame.bit_depth != 8 {
        return Err("Only 8-bit videos can be made into pictures".into());
    }
    let (w, h) = (frame.width as usize, frame.height as usize);
    let cw = w.div_ceil(2);
    let (y, u, v) = (&frame.y, &frame.u, &frame.v);
    if y.len() < w * h || u.len() < cw * h.div_ceil(2) || v.len() < cw * h.div_ceil(2) {
        return Err("Only 4:2:0 videos can be made into pictures".into());
    }
    // Tightly packed planes: each row's stride is its width.
    yuv_to_rgb(w, h, (y, w), (u, cw), (v, cw))
}

/// Reference pictures an H.264 decoder may hold beside the one it decodes (the most the
/// standard allows).
const H264_MAX_REFERENCES: u64 = 16;

/// An H.264 parameter set checked before the decoder sees it: the SPS sizes the decoder's
/// pictures and how many it keeps, so a forged one (in the stream, unlike the size probed at
/// upload) could make it allocate far more. Its pictures must fit `limit.pixels`, and those
/// it holds together (references, the reordered ones, the one decoded; 1.5 bytes a pixel)
/// `limit.decode_bytes`. Other units pass.
fn check_sps(nal: &rust_h264::nal::NalUnit<'_>, limit: FrameLimit) -> Result<(), String> {
    if nal.nal_unit_type != rust_h264::nal::NalUnitType::Sps {
        return Ok(());
    }
    let info = rust_h264::nal::parse_sps_info(nal).map_err(|e| format!("Corrupt video: {e:?}"))?;
    let (w, h) = (info.coded_width, info.coded_height);
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limit.pixels {
        return Err(format!(
            "The video is too large to make pictures of ({w}x{h} coded)"
        ));
    }
    let pictures =
        u64::from(info.reference_frames).min(H264_MAX_REFERENCES) + 2 + H264_REORDER_DEPTH as u64;
    if pixels.saturating_mul(pictures).saturating_mul(3) / 2 > limit.decode_bytes {
        return Err(format!(
            "The video keeps too many {w}x{h} reference pictures ({}) to make pictures of",
            info.reference_frames
        ));
    }
    Ok(())
}

/// The picture sizes a VP9 stream declares, read from each frame's header before the decoder
/// sees it (a frame header, not the container, sizes the decoder's buffers), with the sizes
/// of the eight reference slots that inter frames may take theirs from.
#[derive(Default)]
struct Vp9Sizes {
    refs: [(u32, u32); 8],
}

impl Vp9Sizes {
    fn check(&mut self, packet: &[u8], limit: FrameLimit) -> Result<(), String> {
        for frame in vp9_frames(packet) {
            let mut r = rusty_vp9::BitReader::new(frame);
            // A header that does not parse is the decoder's to refuse; it sizes nothing.
            let Ok(h) = rusty_vp9::parse_uncompressed_header(&mut r, &self.refs) else {
                continue;
            };
            if h.show_existing_frame {
                continue;
            }
            let pixels = u64::from(h.width) * u64::from(h.height);
            // The eight reference slots and the frame decoded may each hold a picture this
            // size (4:2:0, two bytes a sample).
            if pixels > limit.pixels || pixels.saturating_mul(9 * 3) > limit.decode_bytes {
                return Err(format!(
                    "The video is too large to make pictures of ({}x{})",
                    h.width, h.height
                ));
            }
            let refreshed = if h.key_frame {
                0xFF
            } else {
                h.refresh_frame_flags
            };
            for (k, slot) in self.refs.iter_mut().enumerate() {
                if refreshed & (1 << k) != 0 {
                    *slot = (h.width, h.height);
                }
            }
        }
        Ok(())
    }
}

/// The coded frames of a VP9 packet: those a superframe index lists, or the packet itself.
fn vp9_frames(packet: &[u8]) -> Vec<&[u8]> {
    let n = packet.len();
    if let Some(&marker) = packet.last() {
        if marker & 0xE0 == 0xC0 {
            let count = usize::from(marker & 0x7) + 1;
            let size_bytes = usize::from((marker >> 3) & 0x3) + 1;
            let index_len = 2 + size_bytes * count;
            if n >= index_len && packet[n - index_len] == marker {
                let mut frames = Vec::with_capacity(count);
                let (mut at, mut off) = (n - index_len + 1, 0usize);
                for _ in 0..count {
                    let mut size = 0usize;
                    for j in 0..size_bytes {
                        size |= usize::from(packet[at]) << (j * 8);
                        at += 1;
                    }
                    if let Some(f) = packet.get(off..off.saturating_add(size)) {
                        frames.push(f);
                    }
                    off = off.saturating_add(size);
                }
                if !frames.is_empty() {
                    return frames;
                }
            }
        }
    }
    vec![packet]
}

/// The picture (or, for `gif`, the animation) a delivery URL of a video asks for.
/// `dims` are the video's (as probed at upload) and `max_decode` the memory its decoded
/// pictures may take together.
pub fn render(
    bytes: &[u8],
    plan: &Plan,
    format: &str,
    max_pixels: u64,
    dims: (u64, u64),
    max_decode: u64,
) -> Result<Vec<u8>, String> {
    let per_picture = (dims.0.max(1) * dims.1.max(1)).saturating_mul(3);
    let frames = plan
        .video
        .as_ref()
        .and_then(|v| v.frames)
        .unwrap_or(DEFAULT_FRAMES);
    if format == "gif" && u64::from(frames).saturating_mul(per_picture) > max_decode {
        return Err(format!(
            "A preview of {frames} frames of a {}x{} video is too large to make (fewer frames)",
            dims.0, dims.1
        ));
    }
    // The decoder is third-party code on hostile input: a panic is a refusal, not a crash.
    let limit = FrameLimit::new(max_pixels, dims, max_decode);
    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        render_inner(bytes, plan, format, max_pixels, limit)
    }));
    made.unwrap_or_else(|_| Err("The video could not be decoded".into()))
}

fn render_inner(
    bytes: &[u8],
    plan: &Plan,
    format: &str,
    max_pixels: u64,
    limit: FrameLimit,
) -> Result<Vec<u8>, String> {
    let webm;
    let mp4;
    let source: &dyn Source = if bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        webm = WebmTrack::open(bytes, limit.pixels)?;
        &webm
    } else {
        mp4 = Track::open(bytes)?;
        &mp4
    };
    let duration = source.duration();
    let options = plan.video.clone().unwrap_or_default();
    let start = options
        .start
        .map(|o| o.seconds(duration))
        .unwrap_or(0.0)
        .clamp(0.0, duration);
    let end = match (options.end, options.duration) {
        (Some(e), _) => e.seconds(duration),
        (None, Some(d)) => start + d.seconds(duration),
        (None, None) => duration,
    }
    .clamp(start, duration);
    let shown = source.times();
    // The last frame shown at or before a time.
    let at = |t: f64| {
        shown
            .iter()
            .copied()
            .filter(|c| *c <= t + 1e-9)
            .fold(shown[0], f64::max)
    };
    if format != "gif" && !(format == "webp" && plan.animated) {
        // The poster: `so_` when given, else the middle.
        let t = match options.start {
            Some(_) => start,
            None => duration / 2.0,
        };
        let picture = source
            .pictures(&[at(t)], limit)?
            .pop()
            .ok_or_else(|| "No picture could be decoded from the video".to_string())?;
        let img = transform::apply_image(DynamicImage::ImageRgb8(picture), plan, max_pixels)?;
        return transform::encode(img, format, plan.encoding(true));
    }
    let count = options
        .frames
        .unwrap_or(DEFAULT_FRAMES)
        .clamp(1, MAX_FRAMES);
    let span = (end - start).max(0.0);
    let mut wanted: Vec<f64> = (0..count)
        .map(|k| at(start + span * f64::from(k) / f64::from(count)))
        .collect();
    wanted.dedup();
    let delay = options.delay_ms.unwrap_or_else(|| {
        ((span * 1000.0) / f64::from(count))
            .round()
            .clamp(20.0, 10_000.0) as u32
    });
    let budget = max_pixels.saturating_mul(4);
    let mut made_pixels = 0u64;
    let mut frames = Vec::with_capacity(wanted.len());
    for picture in source.pictures(&wanted, limit)? {
        let img = transform::apply_image(DynamicImage::ImageRgb8(picture), plan, max_pixels)?;
        made_pixels += u64::from(img.width()) * u64::from(img.height());
        if made_pixels > budget {
            return Err(format!(
                "The preview would be too large (at most {budget} pixels in all; fewer frames or a smaller width)"
            ));
        }
        frames.push(Frame::from_parts(
            img.to_rgba8(),
            0,
            0,
            Delay::from_numer_denom_ms(delay, 1),
        ));
    }
    super::pages::encode_animation(frames, format, plan.encoding(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bits written most significant first, with H.264's unsigned Exp-Golomb codes.
    #[derive(Default)]
    struct Bits {
        bytes: Vec<u8>,
        used: usize,
    }

    impl Bits {
        fn bit(&mut self, b: u32) {
            if self.used.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if b != 0 {
                let last = self.bytes.len() - 1;
                self.bytes[last] |= 0x80 >> (self.used % 8);
            }
            self.used += 1;
        }
        fn bits(&mut self, v: u32, n: u32) {
            for k in (0..n).rev() {
                self.bit((v >> k) & 1);
            }
        }
        fn ue(&mut self, v: u32) {
            let n = 32 - (v + 1).leading_zeros();
            self.bits(0, n - 1);
            self.bits(v + 1, n);
        }
    }

    /// A baseline-profile SPS of `mbs_w` × `mbs_h` macroblocks keeping `refs` references.
    fn sps(mbs_w: u32, mbs_h: u32, refs: u32) -> Vec<u8> {
        let mut b = Bits::default();
        b.bits(66, 8); // profile_idc: baseline
        b.bits(0, 8); // constraint flags
        b.bits(30, 8); // level_idc
        b.ue(0); // seq_parameter_set_id
        b.ue(0); // log2_max_frame_num_minus4
        b.ue(2); // pic_order_cnt_type
        b.ue(refs); // max_num_ref_frames
        b.bit(0); // gaps_in_frame_num_value_allowed_flag
        b.ue(mbs_w - 1);
        b.ue(mbs_h - 1);
        b.bit(1); // frame_mbs_only_flag
        b.bit(1); // direct_8x8_inference_flag
        b.bit(0); // frame_cropping_flag
        b.bit(0); // vui_parameters_present_flag
        b.bit(1); // rbsp_stop_one_bit
        b.bytes
    }

    fn sps_nal(rbsp: &[u8]) -> rust_h264::nal::NalUnit<'_> {
        rust_h264::nal::NalUnit {
            nal_ref_idc: 3,
            nal_unit_type: rust_h264::nal::NalUnitType::Sps,
            rbsp: std::borrow::Cow::Borrowed(rbsp),
        }
    }

    #[test]
    fn forged_h264_sizes_are_refused_before_decoding() {
        // A 320 × 240 video as probed: pictures up to twice that, 64 MiB of decoder pictures.
        let limit = FrameLimit::new(50_000_000, (320, 240), 64 << 20);
        assert_eq!(limit.pixels, 2 * 320 * 240);
        assert!(check_sps(&sps_nal(&sps(20, 15, 1)), limit).is_ok());
        // A stream that says 16000 × 16000, or just 640 × 480, is not what was probed.
        let err = check_sps(&sps_nal(&sps(1000, 1000, 1)), limit).unwrap_err();
        assert!(err.contains("16000x16000"), "{err}");
        assert!(check_sps(&sps_nal(&sps(40, 30, 1)), limit).is_err());
        // 1600 × 1600 as probed: allowed with one reference, not with sixteen beside it.
        let limit = FrameLimit::new(50_000_000, (1600, 1600), 64 << 20);
        assert!(check_sps(&sps_nal(&sps(100, 100, 1)), limit).is_ok());
        let err = check_sps(&sps_nal(&sps(100, 100, 16)), limit).unwrap_err();
        assert!(err.contains("reference"), "{err}");
        // Without a probed size, the picture limit alone.
        let limit = FrameLimit::new(50_000_000, (0, 0), 1 << 30);
        assert!(check_sps(&sps_nal(&sps(400, 400, 1)), limit).is_ok());
    }

    /// A VP9 profile-0 keyframe header declaring `w` × `h`, padded with zero bytes.
    fn vp9_keyframe(w: u32, h: u32) -> Vec<u8> {
        let mut b = Bits::default();
        b.bits(2, 2); // frame_marker
        b.bits(0, 2); // profile 0
        b.bit(0); // show_existing_frame
        b.bit(0); // frame_type: key
        b.bit(1); // show_frame
        b.bit(0); // error_resilient_mode
        b.bits(0x49_8342, 24); // sync code
        b.bits(1, 3); // color_space: BT.601
        b.bit(0); // color_range
        b.bits(w - 1, 16);
        b.bits(h - 1, 16);
        b.bit(0); // render size as the frame size
        let mut out = b.bytes;
        out.resize(64, 0);
        out
    }

    #[test]
    fn forged_vp9_sizes_are_refused_before_decoding() {
        let max = FrameLimit::new(50_000_000, (0, 0), 256 << 20);
        let mut sizes = Vp9Sizes::default();
        let huge = vp9_keyframe(65_536, 65_536);
        let parsed = rusty_vp9::parse_uncompressed_header(
            &mut rusty_vp9::BitReader::new(&huge),
            &[(0, 0); 8],
        )
        .unwrap();
        assert_eq!((parsed.width, parsed.height), (65_536, 65_536));
        let err = sizes.check(&huge, max).unwrap_err();
        assert!(err.contains("65536x65536"), "{err}");
        // A small keyframe passes and fills the reference slots; not beyond the probed size.
        sizes.check(&vp9_keyframe(320, 240), max).unwrap();
        assert_eq!(sizes.refs, [(320, 240); 8]);
        let probed = FrameLimit::new(50_000_000, (160, 120), 256 << 20);
        assert!(Vp9Sizes::default()
            .check(&vp9_keyframe(640, 480), probed)
            .is_err());
        assert!(Vp9Sizes::default()
            .check(&vp9_keyframe(160, 120), probed)
            .is_ok());
        // Inside a superframe (two frames and a one-byte-size index), the huge one is found.
        let small = vp9_keyframe(16, 16);
        let mut packet = small.clone();
        packet.extend_from_slice(&huge);
        let marker = 0xC0 | 1; // two frames, sizes of one byte
        packet.extend_from_slice(&[marker, small.len() as u8, huge.len() as u8, marker]);
        assert_eq!(vp9_frames(&packet).len(), 2);
        assert!(Vp9Sizes::default().check(&packet, max).is_err());
    }

    #[test]
    fn offsets_parse() {
        assert_eq!(Offset::parse("2.5"), Some(Offset::Seconds(2.5)));
        assert_eq!(Offset::parse("50p"), Some(Offset::Percent(50.0)));
        assert_eq!(Offset::parse("-1"), None);
        assert_eq!(Offset::parse("x"), None);
    }

    #[test]
    fn sample_tables_claiming_too_much_are_refused() {
        let mut forged = b"\x00\x00\x00\x14stsz\x00\x00\x00\x00\x00\x00\x00\x01".to_vec();
        forged.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(check_sample_counts(&forged).is_err());
        let mut fine = b"\x00\x00\x00\x14stsz\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
        fine.extend_from_slice(&3u32.to_be_bytes());
        fine.extend_from_slice(&[0u8; 12]);
        assert!(check_sample_counts(&fine).is_ok());
    }

    #[test]
    fn junk_is_refused_not_a_panic() {
        let plan = Plan::default();
        for junk in [&b""[..], b"\x00\x00\x00\x18ftypmp42", &[0xffu8; 4096][..]] {
            assert!(render(junk, &plan, "jpg", 1_000_000, (10, 10), 1 << 28).is_err());
        }
    }
}
