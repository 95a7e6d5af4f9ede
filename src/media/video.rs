//! Pictures from videos: the poster image (`.jpg`/`.png`/`.webp` of a video public ID — the
//! middle frame, or `so_`) and the animated preview (`.gif`, `vs_` frames spread over `so_`…`eo_`
//! or `du_`, `dl_` milliseconds apart). MP4/MOV files with H.264 video: demuxed by `re_mp4`,
//! decoded by `rust_h264` (both pure Rust). Bounded: the picture size by the pixel limit, the
//! frames made by four times it, the samples decoded per picture.

use std::io::Cursor;

use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, DynamicImage, Frame, RgbImage};
use re_mp4::{Mp4, StsdBoxContent};

use super::transform::{self, Plan};

/// Frames of an animated preview at most.
pub const MAX_FRAMES: u32 = 100;
/// Frames of a preview when `vs_` does not say.
const DEFAULT_FRAMES: u32 = 10;
/// Samples decoded to reach one picture at most (a group of pictures longer than this is cut).
const MAX_DECODED: usize = 600;

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

impl<'a> Track<'a> {
    fn open(bytes: &'a [u8]) -> Result<Track<'a>, String> {
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
    fn pictures(&self, wanted: &[i64], max_pixels: u64) -> Result<Vec<RgbImage>, String> {
        use rust_h264::decoder::OrderedDecoder;
        use rust_h264::nal::{parse_avcc, parse_avcc_config};
        let cfg = parse_avcc_config(&self.avcc).map_err(|e| format!("Corrupt video: {e:?}"))?;
        let mut found: std::collections::HashMap<i64, RgbImage> = Default::default();
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
            let mut dec = OrderedDecoder::<i64>::new();
            for n in cfg.sps_nals.iter().chain(&cfg.pps_nals) {
                dec.decode_nal_with_meta(n, i64::MIN)
                    .map_err(|e| format!("Corrupt video: {e:?}"))?;
            }
            let mut keep = |frame: rust_h264::decoder::Frame, cts: i64| -> Result<bool, String> {
                if u64::from(frame.width) * u64::from(frame.height) > max_pixels {
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
            for (n, s) in (key..self.samples.len()).enumerate() {
                if done || n >= MAX_DECODED {
                    break;
                }
                let cts = self.samples[s].composition_timestamp;
                for nal in parse_avcc(self.sample(s)?, cfg.length_size) {
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
            match found.get(t).cloned().or_else(|| previous.clone()) {
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
    let mut out = vec![0u8; w * h * 3];
    for row in 0..h {
        for col in 0..w {
            let c = (i32::from(y[row * w + col]) - 16) * 298;
            let d = i32::from(u[(row / 2) * cw + col / 2]) - 128;
            let e = i32::from(v[(row / 2) * cw + col / 2]) - 128;
            let o = (row * w + col) * 3;
            out[o] = ((c + 409 * e + 128) >> 8).clamp(0, 255) as u8;
            out[o + 1] = ((c - 100 * d - 208 * e + 128) >> 8).clamp(0, 255) as u8;
            out[o + 2] = ((c + 516 * d + 128) >> 8).clamp(0, 255) as u8;
        }
    }
    RgbImage::from_raw(w as u32, h as u32, out).ok_or_else(|| "Corrupt video frame".into())
}

/// The picture (or, for `gif`, the animation) a delivery URL of a video asks for.
pub fn render(bytes: &[u8], plan: &Plan, format: &str, max_pixels: u64) -> Result<Vec<u8>, String> {
    // The decoder is third-party code on hostile input: a panic is a refusal, not a crash.
    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        render_inner(bytes, plan, format, max_pixels)
    }));
    made.unwrap_or_else(|_| Err("The video could not be decoded".into()))
}

fn render_inner(
    bytes: &[u8],
    plan: &Plan,
    format: &str,
    max_pixels: u64,
) -> Result<Vec<u8>, String> {
    let track = Track::open(bytes)?;
    let duration = track.duration();
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
    let ticks = |s: f64| (s * track.timescale) as i64;
    let mut shown: Vec<i64> = track
        .samples
        .iter()
        .map(|s| s.composition_timestamp)
        .collect();
    shown.sort_unstable();
    // The last frame shown at or before a time.
    let at = |t: i64| {
        shown
            .iter()
            .copied()
            .filter(|c| *c <= t)
            .max()
            .unwrap_or(shown[0])
    };
    if format != "gif" {
        // The poster: `so_` when given, else the middle.
        let t = match options.start {
            Some(_) => start,
            None => duration / 2.0,
        };
        let picture = track
            .pictures(&[at(ticks(t))], max_pixels)?
            .pop()
            .ok_or_else(|| "No picture could be decoded from the video".to_string())?;
        let img = transform::apply_image(DynamicImage::ImageRgb8(picture), plan, max_pixels)?;
        return transform::encode(img, format, plan.quality.unwrap_or(80));
    }
    let count = options
        .frames
        .unwrap_or(DEFAULT_FRAMES)
        .clamp(1, MAX_FRAMES);
    let span = (end - start).max(0.0);
    let mut wanted: Vec<i64> = (0..count)
        .map(|k| at(ticks(start + span * f64::from(k) / f64::from(count))))
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
    for picture in track.pictures(&wanted, max_pixels)? {
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
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut out, 10);
        encoder
            .set_repeat(Repeat::Infinite)
            .map_err(|e| format!("Cannot encode gif: {e}"))?;
        encoder
            .encode_frames(frames)
            .map_err(|e| format!("Cannot encode gif: {e}"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse() {
        assert_eq!(Offset::parse("2.5"), Some(Offset::Seconds(2.5)));
        assert_eq!(Offset::parse("50p"), Some(Offset::Percent(50.0)));
        assert_eq!(Offset::parse("-1"), None);
        assert_eq!(Offset::parse("x"), None);
    }

    #[test]
    fn junk_is_refused_not_a_panic() {
        let plan = Plan::default();
        for junk in [&b""[..], b"\x00\x00\x00\x18ftypmp42", &[0xffu8; 4096][..]] {
            assert!(render(junk, &plan, "jpg", 1_000_000).is_err());
        }
    }
}
