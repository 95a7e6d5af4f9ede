//! Delivery transformations of images: the common part of Cloudinary's URL syntax, parsed
//! into a [`Plan`] and applied to decoded pictures.
//!
//! A transformation is `/`-separated components of `,`-separated `key_value` items, applied
//! in order: geometry (`w_`, `h_`, `c_`, `g_`, `ar_`, `dpr_`, `x_`, `y_`, `a_`), effects
//! (`e_…`), corners, opacity, borders, text and image layers (`l_`, `u_`, up to
//! `fl_layer_apply`), quality and format (`q_`, `f_`), pages (`pg_`) and the video options
//! (`so_`, `eo_`, `du_`, `vs_`, `dl_`, used by `video.rs`). The README's table lists every
//! value. Anything else is refused with a message naming it, never ignored; every step is
//! bounded by the pixel limit.

use std::io::Cursor;

use image::{imageops, DynamicImage, ImageFormat, Rgba, RgbaImage};

use super::pages;
pub use super::webp_encode::{is_lossy_source, Encoding};
use super::{avif_encode, webp_encode};

/// A parsed transformation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// `f_`: the output format (`auto` resolved at delivery).
    pub format: Option<String>,
    /// `q_` for lossy output; `None` is Cloudinary's default (80).
    pub quality: Option<u8>,
    /// `fl_attachment`: download instead of display.
    pub attachment: bool,
    /// `w_auto[:breakpoints…][:json]`: the width is chosen by responsive breakpoints (capped at
    /// their largest); with `json`, the breakpoints themselves are the answer.
    pub auto_width: Option<(super::breakpoints::Settings, bool)>,
    /// `pg_<n>`: the page (frame of an animated GIF or WebP, page of a TIFF), 1-based.
    pub page: Option<u32>,
    /// `fl_animated`/`fl_awebp`: a video delivered as WebP is an animated preview, not a poster.
    pub animated: bool,
    /// `fl_lossy`: WebP written lossy even from a lossless source.
    pub lossy: bool,
    /// `so_`, `eo_`, `du_`, `vs_`, `dl_`: the part of a video a picture or preview is made of.
    pub video: Option<super::video::VideoOptions>,
}

impl Plan {
    /// How this plan's output is written, for a source that is lossy (a JPEG, a lossy WebP, a
    /// video frame) or not: `q_` (80 when not given), and WebP lossy for a lossy source, with
    /// `fl_lossy`, or with a quality below 100 (`q_auto` included); a lossless source otherwise
    /// stays lossless as WebP.
    pub fn encoding(&self, lossy_source: bool) -> Encoding {
        Encoding {
            quality: self.quality.unwrap_or(80),
            lossy_webp: lossy_source || self.lossy || self.quality.is_some_and(|q| q < 100),
            auto_format: self.format.as_deref() == Some("auto"),
        }
    }
}

/// One component's geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    width: Option<Dim>,
    height: Option<Dim>,
    crop: Mode,
    /// Where to keep the image when cropping or padding: fractions of the free space.
    anchor: (f64, f64),
    aspect: Option<f64>,
    dpr: f64,
    background: Rgba<u8>,
    x: Option<i64>,
    y: Option<i64>,
    angle: Option<String>,
    effects: Vec<Effect>,
    /// `r_`: corner radius in pixels; `None` inside means `max` (an ellipse).
    radius: Option<Option<u32>>,
    /// `o_`: opacity in percent.
    opacity: Option<u8>,
    /// `bo_<n>px_solid_<colour>`.
    border: Option<(u32, Rgba<u8>)>,
    /// `l_text:…`: the component's geometry applies to this layer, which is then placed on
    /// the image (by `g_`, `x_`, `y_`).
    overlay: Option<Layer>,
    /// `co_`: the colour of text layers (and of `e_colorize`).
    color: Option<Rgba<u8>>,
    /// `u_…`: the layer goes under the image.
    underlay: bool,
    /// The components between a layer and its `fl_layer_apply`: applied to the layer.
    layer_steps: Vec<Step>,
    /// `fl_layer_apply`: this component places the open layer.
    apply_layer: bool,
    /// `g_face`, `g_faces`, `g_custom`, `g_auto`: the crop follows the asset's stored
    /// coordinates (centre when there are none).
    focus_gravity: Option<Focus>,
    /// The centre of the rectangles the gravity follows, as fractions of the image.
    focus: Option<(f64, f64)>,
    /// Whether `b_` was given (a text layer then has that background).
    background_given: bool,
}

/// What a crop's gravity follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Focus {
    /// The first face.
    Face,
    /// All faces.
    Faces,
    /// The custom coordinates (else the faces).
    Custom,
    /// Custom coordinates, else faces, else the centre.
    Auto,
}

/// An overlay layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    Text {
        style: super::text::TextStyle,
        text: String,
    },
    /// `l_<public_id>` (folders written with `:`): another image of the cloud, or
    /// `l_fetch:<base64 URL>`: a remote image; the caller loads the bytes before the plan is
    /// applied.
    Image {
        public_id: String,
        data: Option<std::sync::Arc<Vec<u8>>>,
    },
}

/// The prefix of a fetched layer's name (`Layer::Image` with a remote URL).
pub const FETCH_PREFIX: &str = "fetch:";

impl Plan {
    /// Points the gravities that follow faces or custom coordinates at them: rectangles
    /// `[x, y, w, h]` in pixels of the `width`×`height` source.
    pub fn set_focus(&mut self, faces: &[[f64; 4]], custom: &[[f64; 4]], width: f64, height: f64) {
        if width <= 0.0 || height <= 0.0 {
            return;
        }
        let centre = |rects: &[[f64; 4]]| -> Option<(f64, f64)> {
            let first = rects.first()?;
            let (mut x0, mut y0) = (first[0], first[1]);
            let (mut x1, mut y1) = (first[0] + first[2], first[1] + first[3]);
            for r in rects {
                x0 = x0.min(r[0]);
                y0 = y0.min(r[1]);
                x1 = x1.max(r[0] + r[2]);
                y1 = y1.max(r[1] + r[3]);
            }
            Some((
                ((x0 + x1) / 2.0 / width).clamp(0.0, 1.0),
                ((y0 + y1) / 2.0 / height).clamp(0.0, 1.0),
            ))
        };
        for step in &mut self.steps {
            step.focus = match step.focus_gravity {
                None => None,
                Some(Focus::Face) => centre(&faces[..faces.len().min(1)]),
                Some(Focus::Faces) => centre(faces),
                Some(Focus::Custom) | Some(Focus::Auto) => centre(custom).or_else(|| centre(faces)),
            };
        }
    }

    /// The image layers of the plan (their bytes to load), in order.
    pub fn image_layers_mut(&mut self) -> Vec<(&str, &mut Option<std::sync::Arc<Vec<u8>>>)> {
        fn walk<'a>(
            steps: &'a mut [Step],
            out: &mut Vec<(&'a str, &'a mut Option<std::sync::Arc<Vec<u8>>>)>,
        ) {
            for s in steps {
                if let Some(Layer::Image { public_id, data }) = &mut s.overlay {
                    out.push((public_id.as_str(), data));
                }
                walk(&mut s.layer_steps, out);
            }
        }
        let mut out = Vec::new();
        walk(&mut self.steps, &mut out);
        out
    }
}

/// A `w_`/`h_` value: pixels, or a factor of the current size (written with a decimal point,
/// like Cloudinary's `w_0.5` or `w_2.0`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dim {
    Px(f64),
    Of(f64),
}

/// `e_…` effects.
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    Grayscale,
    Sepia(f32),
    Negate,
    Blur(f32),
    Sharpen(f32),
    /// Threshold, 0–100.
    BlackWhite(f32),
    /// -99–100.
    Brightness(f32),
    /// -100–100.
    Contrast(f32),
    /// -100–100.
    Saturation(f32),
    /// -50–150.
    Gamma(f32),
    /// Block size in pixels.
    Pixelate(u32),
    /// 0–100, towards the component's `co_` colour.
    Colorize(f32),
    /// 0–100.
    Vignette(f32),
    /// Each channel stretched to the full range (`auto_contrast`, and `improve` as its
    /// approximation).
    AutoContrast,
    /// Borders of the top-left corner's colour cut away, within a tolerance of 0–100.
    Trim(f32),
    /// A shadow of the image's shape, 0–100 strong, in `co_` (grey by default), moved by
    /// `x_`/`y_` (15 px right and down by default).
    Shadow(f32),
    /// An outline `width` pixels wide around the image's shape, in `co_` (black by default).
    Outline(u32),
    /// Colours within `tolerance` (0–100) of `from` (the most common colour when absent)
    /// become `to`.
    ReplaceColor {
        to: Rgba<u8>,
        tolerance: f32,
        from: Option<Rgba<u8>>,
    },
}

impl Default for Step {
    fn default() -> Self {
        Step {
            width: None,
            height: None,
            crop: Mode::Scale,
            anchor: (0.5, 0.5),
            aspect: None,
            dpr: 1.0,
            background: Rgba([255, 255, 255, 255]),
            x: None,
            y: None,
            angle: None,
            effects: Vec::new(),
            radius: None,
            opacity: None,
            border: None,
            overlay: None,
            color: None,
            underlay: false,
            layer_steps: Vec::new(),
            apply_layer: false,
            focus_gravity: None,
            focus: None,
            background_given: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Scale,
    Fit,
    Limit,
    Mfit,
    Fill,
    Lfill,
    Pad,
    Lpad,
    Region,
}

/// Overlays one transformation may have.
pub const MAX_OVERLAYS: usize = 10;

/// Pages (GIF frames) a transformation may name.
pub const MAX_PAGE: u32 = 1000;

/// Output formats nephos can encode.
pub const OUTPUT_FORMATS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tiff", "tif", "avif",
];

/// Source formats nephos can decode.
pub fn can_decode(format: &str) -> bool {
    matches!(
        format,
        "jpg" | "jpeg" | "png" | "webp" | "gif" | "bmp" | "tiff" | "tif"
    )
}

fn invalid(item: &str, why: &str) -> String {
    format!("Invalid transformation {item}: {why}")
}

/// Parses a transformation string such as `c_fill,h_100,w_100/q_auto,f_auto`.
/// Effects one component may carry.
const MAX_EFFECTS: usize = 8;

/// Components one transformation may chain.
pub const MAX_COMPONENTS: usize = 32;

pub fn parse(t: &str) -> Result<Plan, String> {
    let mut plan = Plan::default();
    if t.split('/').count() > MAX_COMPONENTS {
        return Err(format!(
            "Too many chained transformations (at most {MAX_COMPONENTS})"
        ));
    }
    let components: Vec<&str> = t.split('/').collect();
    // The step whose layer the next components transform, until `fl_layer_apply`.
    let mut open_layer: Option<usize> = None;
    for (index, component) in components.iter().enumerate() {
        let component = *component;
        let mut step = Step::default();
        let mut geometric = false;
        for item in component.split(',') {
            let (key, value) = item
                .split_once('_')
                .ok_or_else(|| invalid(item, "expected key_value"))?;
            let number = || -> Result<f64, String> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n > 0.0)
                    .ok_or_else(|| invalid(item, "expected a positive number"))
            };
            match key {
                "w" if value.starts_with("auto") => {
                    plan.auto_width = Some(
                        super::breakpoints::parse_auto(value).map_err(|why| invalid(item, &why))?,
                    );
                }
                "w" | "h" => {
                    let n = number()?;
                    let d = if value.contains('.') || n < 1.0 {
                        Dim::Of(n)
                    } else {
                        Dim::Px(n)
                    };
                    if key == "w" {
                        step.width = Some(d)
                    } else {
                        step.height = Some(d)
                    }
                }
                "c" => {
                    step.crop = match value {
                        "scale" => Mode::Scale,
                        "fit" => Mode::Fit,
                        "limit" => Mode::Limit,
                        "mfit" => Mode::Mfit,
                        "fill" | "thumb" | "auto" => Mode::Fill,
                        "lfill" => Mode::Lfill,
                        "pad" | "fill_pad" => Mode::Pad,
                        "lpad" => Mode::Lpad,
                        "crop" => Mode::Region,
                        _ => return Err(invalid(item, "unsupported crop mode")),
                    }
                }
                "g" => {
                    step.anchor = anchor(value);
                    step.focus_gravity = match value {
                        "face" | "auto:face" => Some(Focus::Face),
                        "faces" | "auto:faces" => Some(Focus::Faces),
                        "custom" | "custom:face" | "custom:faces" => Some(Focus::Custom),
                        "auto" => Some(Focus::Auto),
                        _ => None,
                    };
                }
                "ar" => {
                    let ratio = match value.split_once(':') {
                        Some((a, b)) => a
                            .parse::<f64>()
                            .ok()
                            .zip(b.parse::<f64>().ok())
                            .and_then(|(a, b)| (a > 0.0 && b > 0.0).then_some(a / b)),
                        None => value.parse::<f64>().ok().filter(|r| *r > 0.0),
                    };
                    step.aspect =
                        Some(ratio.ok_or_else(|| invalid(item, "expected w:h or a ratio"))?);
                }
                "dpr" => {
                    step.dpr = if value == "auto" {
                        1.0
                    } else {
                        number()?.min(5.0)
                    }
                }
                "x" | "y" => {
                    let v = value
                        .parse::<i64>()
                        .map_err(|_| invalid(item, "expected whole pixels"))?;
                    if key == "x" {
                        step.x = Some(v)
                    } else {
                        step.y = Some(v)
                    }
                }
                "b" => {
                    step.background =
                        color(value).ok_or_else(|| invalid(item, "unknown colour"))?;
                    step.background_given = true;
                }
                "a" => match value {
                    "hflip" | "vflip" | "auto_right" | "auto_left" => {
                        step.angle = Some(value.to_string())
                    }
                    v => {
                        let deg = v
                            .parse::<i64>()
                            .ok()
                            .filter(|d| d.abs() <= 3600)
                            .ok_or_else(|| invalid(item, "expected degrees, hflip or vflip"))?;
                        step.angle = Some(deg.rem_euclid(360).to_string());
                    }
                },
                "e" => {
                    if step.effects.len() >= MAX_EFFECTS {
                        return Err(format!(
                            "Too many effects in one component (at most {MAX_EFFECTS})"
                        ));
                    }
                    step.effects.push(effect(item, value)?)
                }
                "r" => {
                    step.radius = Some(if value == "max" {
                        None
                    } else {
                        Some(
                            value
                                .parse::<u32>()
                                .map_err(|_| invalid(item, "expected pixels or max"))?,
                        )
                    })
                }
                "o" => {
                    step.opacity = Some(
                        value
                            .parse::<u8>()
                            .ok()
                            .filter(|o| *o <= 100)
                            .ok_or_else(|| invalid(item, "expected 0 to 100"))?,
                    )
                }
                "bo" => {
                    let (width, colour) = value
                        .split_once("px_solid_")
                        .ok_or_else(|| invalid(item, "expected <n>px_solid_<colour>"))?;
                    let width = width
                        .parse::<u32>()
                        .ok()
                        .filter(|w| *w <= 1000)
                        .ok_or_else(|| invalid(item, "expected a width up to 1000 pixels"))?;
                    let colour = color(colour).ok_or_else(|| invalid(item, "unknown colour"))?;
                    step.border = Some((width, colour));
                }
                "q" => {
                    plan.quality = Some(match value {
                        "auto" | "auto:good" => 80,
                        "auto:best" => 90,
                        "auto:eco" => 70,
                        "auto:low" => 60,
                        v => v
                            .parse::<u8>()
                            .ok()
                            .filter(|q| (1..=100).contains(q))
                            .ok_or_else(|| invalid(item, "expected 1 to 100 or auto"))?,
                    })
                }
                "f" => {
                    let f = value.to_ascii_lowercase();
                    if f != "auto" && !OUTPUT_FORMATS.contains(&f.as_str()) {
                        return Err(invalid(item, "unsupported format"));
                    }
                    plan.format = Some(f);
                }
                "fl" if value == "attachment" => plan.attachment = true,
                "fl" if value == "layer_apply" => step.apply_layer = true,
                // An encoding hint with no effect on the pixels: JPEG is written baseline.
                "fl" if value == "progressive" => {}
                // WebP lossy from any source (GIF and PNG stay lossless).
                "fl" if value == "lossy" => plan.lossy = true,
                "fl" if value == "animated" || value == "awebp" => plan.animated = true,
                "pg" => {
                    plan.page = Some(
                        value
                            .parse::<u32>()
                            .ok()
                            .filter(|p| (1..=MAX_PAGE).contains(p))
                            .ok_or_else(|| invalid(item, "expected a page number"))?,
                    )
                }
                "so" | "eo" | "du" => {
                    let o = super::video::Offset::parse(value)
                        .ok_or_else(|| invalid(item, "expected seconds or a percentage (50p)"))?;
                    let v = plan.video.get_or_insert_with(Default::default);
                    match key {
                        "so" => v.start = Some(o),
                        "eo" => v.end = Some(o),
                        _ => v.duration = Some(o),
                    }
                }
                "vs" => {
                    let n = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=super::video::MAX_FRAMES).contains(n))
                        .ok_or_else(|| {
                            invalid(
                                item,
                                &format!("expected 1 to {} frames", super::video::MAX_FRAMES),
                            )
                        })?;
                    plan.video.get_or_insert_with(Default::default).frames = Some(n);
                }
                "dl" => {
                    let ms = value
                        .parse::<u32>()
                        .ok()
                        .filter(|ms| (10..=10_000).contains(ms))
                        .ok_or_else(|| invalid(item, "expected 10 to 10000 milliseconds"))?;
                    plan.video.get_or_insert_with(Default::default).delay_ms = Some(ms);
                }
                "l" => step.overlay = Some(layer(item, value)?),
                "u" => {
                    step.overlay = Some(layer(item, value)?);
                    step.underlay = true;
                }
                "co" => {
                    step.color = Some(color(value).ok_or_else(|| invalid(item, "unknown colour"))?)
                }
                _ => {
                    return Err(format!(
                        "Transformation {item} is not supported by this server"
                    ))
                }
            }
            geometric |= matches!(
                key,
                "w" | "h"
                    | "c"
                    | "ar"
                    | "dpr"
                    | "x"
                    | "y"
                    | "a"
                    | "e"
                    | "r"
                    | "o"
                    | "bo"
                    | "l"
                    | "u"
                    | "g"
            );
        }
        if let Some(host) = open_layer {
            if step.apply_layer {
                // Where the layer goes: this component's gravity and offsets.
                let placed = &mut plan.steps[host];
                placed.anchor = step.anchor;
                placed.x = step.x;
                placed.y = step.y;
                open_layer = None;
            } else if geometric {
                plan.steps[host].layer_steps.push(step);
            }
            continue;
        }
        if step.apply_layer {
            return Err(format!(
                "fl_layer_apply in {component} closes no layer (l_ or u_ before it)"
            ));
        }
        if step.overlay.is_some() {
            let applied_later = components[index + 1..]
                .iter()
                .any(|c| c.split(',').any(|i| i == "fl_layer_apply"));
            if applied_later {
                open_layer = Some(plan.steps.len());
            }
        }
        if geometric {
            plan.steps.push(step);
        }
    }
    fn layers(steps: &[Step]) -> usize {
        steps
            .iter()
            .map(|s| usize::from(s.overlay.is_some()) + layers(&s.layer_steps))
            .sum()
    }
    if layers(&plan.steps) > MAX_OVERLAYS {
        return Err(format!(
            "Too many overlays in one transformation (at most {MAX_OVERLAYS})"
        ));
    }
    Ok(plan)
}

/// `l_text:<family>_<size>[_<style>…]:<text>` (the text percent-encoded), or
/// `l_<public_id>` of an image of the cloud (folders written with `:`).
fn layer(item: &str, value: &str) -> Result<Layer, String> {
    let Some(spec) = value.strip_prefix("text:") else {
        if let Some(encoded) = value.strip_prefix("fetch:") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .or_else(|_| base64::engine::general_purpose::STANDARD.decode(encoded))
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|u| {
                    let l = u.to_ascii_lowercase();
                    (l.starts_with("http://") || l.starts_with("https://")) && u.len() <= 2048
                })
                .ok_or_else(|| invalid(item, "expected fetch:<base64 of an http(s) URL>"))?;
            return Ok(Layer::Image {
                public_id: format!("{FETCH_PREFIX}{decoded}"),
                data: None,
            });
        }
        if value.starts_with("video:") || value.starts_with("subtitles:") {
            return Err(format!(
                "Transformation {item} is not supported by this server (text and image layers are)"
            ));
        }
        let public_id = value.replace(':', "/");
        if public_id.is_empty()
            || public_id
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(invalid(
                item,
                "expected a public ID (folders separated by :)",
            ));
        }
        return Ok(Layer::Image {
            public_id,
            data: None,
        });
    };
    let (style, text) = spec
        .split_once(':')
        .ok_or_else(|| invalid(item, "expected text:<font>_<size>:<text>"))?;
    let style = super::text::parse_style(style).map_err(|why| invalid(item, &why))?;
    let text = percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned();
    if text.is_empty() {
        return Err(invalid(item, "the text is empty"));
    }
    if text.chars().count() > super::text::MAX_CHARS {
        return Err(invalid(item, "the text is too long"));
    }
    Ok(Layer::Text { style, text })
}

/// Renders a component's layer, gives it the component's geometry and places it on `base`.
fn apply_overlay(
    base: DynamicImage,
    s: &Step,
    layer: &Layer,
    max_pixels: u64,
) -> Result<DynamicImage, String> {
    let source = match layer {
        Layer::Text { style, text } => {
            let mut style = style.clone();
            if let Some(c) = s.color {
                style.color = c;
            }
            let rendered = super::text::render(text, &style, max_pixels)?;
            if s.background_given {
                // `b_` on a text layer: the text on that colour.
                let mut boxed =
                    RgbaImage::from_pixel(rendered.width(), rendered.height(), s.background);
                imageops::overlay(&mut boxed, &rendered, 0, 0);
                DynamicImage::ImageRgba8(boxed)
            } else {
                DynamicImage::ImageRgba8(rendered)
            }
        }
        Layer::Image {
            public_id,
            data: Some(bytes),
        } => decode_layer(bytes, public_id, max_pixels)?,
        Layer::Image { public_id, .. } => {
            return Err(format!("Overlay image {public_id} is not available here"))
        }
    };
    let geometry = Step {
        overlay: None,
        layer_steps: Vec::new(),
        underlay: false,
        x: None,
        y: None,
        anchor: (0.5, 0.5),
        focus: None,
        focus_gravity: None,
        crop: if s.crop == Mode::Region {
            Mode::Scale
        } else {
            s.crop
        },
        // `co_` colours a text layer; on an image layer it is for `e_colorize`.
        color: if matches!(layer, Layer::Text { .. }) {
            None
        } else {
            s.color
        },
        ..s.clone()
    };
    let mut layer_img = apply_step(source, &geometry, max_pixels)?;
    for step in &s.layer_steps {
        layer_img = apply_step(layer_img, step, max_pixels)?;
    }
    let layer = layer_img.to_rgba8();
    let base = base.to_rgba8();
    let free_x = i64::from(base.width()) - i64::from(layer.width());
    let free_y = i64::from(base.height()) - i64::from(layer.height());
    // Offsets move the layer away from the gravity's edge (towards the centre).
    let toward = |anchor: f64, offset: i64| if anchor > 0.5 { -offset } else { offset };
    let dx = (free_x as f64 * s.anchor.0).round() as i64 + toward(s.anchor.0, s.x.unwrap_or(0));
    let dy = (free_y as f64 * s.anchor.1).round() as i64 + toward(s.anchor.1, s.y.unwrap_or(0));
    if s.underlay {
        // The image goes over the layer; the canvas keeps the image's size.
        let mut canvas = RgbaImage::new(base.width(), base.height());
        imageops::overlay(&mut canvas, &layer, dx, dy);
        imageops::overlay(&mut canvas, &base, 0, 0);
        return Ok(DynamicImage::ImageRgba8(canvas));
    }
    let mut canvas = base;
    imageops::overlay(&mut canvas, &layer, dx, dy);
    Ok(DynamicImage::ImageRgba8(canvas))
}

/// Decodes an overlay image within the pixel bound.
fn decode_layer(bytes: &[u8], public_id: &str, max_pixels: u64) -> Result<DynamicImage, String> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("Cannot read overlay {public_id}: {e}"))?;
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| format!("Cannot decode overlay {public_id}: {e}"))?;
    if u64::from(img.width()) * u64::from(img.height()) > max_pixels {
        return Err(format!("Overlay {public_id} is too large"));
    }
    Ok(img)
}

fn anchor(gravity: &str) -> (f64, f64) {
    match gravity {
        "north" => (0.5, 0.0),
        "south" => (0.5, 1.0),
        "east" => (1.0, 0.5),
        "west" => (0.0, 0.5),
        "north_east" => (1.0, 0.0),
        "north_west" => (0.0, 0.0),
        "south_east" => (1.0, 1.0),
        "south_west" => (0.0, 1.0),
        _ => (0.5, 0.5),
    }
}

pub fn color(v: &str) -> Option<Rgba<u8>> {
    let hex = v.strip_prefix("rgb:").or_else(|| v.strip_prefix('#'));
    if let Some(h) = hex {
        let h: String = if h.len() == 3 {
            h.chars().flat_map(|c| [c, c]).collect()
        } else {
            h.to_string()
        };
        let byte = |i: usize| u8::from_str_radix(h.get(i..i + 2)?, 16).ok();
        return match h.len() {
            6 => Some(Rgba([byte(0)?, byte(2)?, byte(4)?, 255])),
            8 => Some(Rgba([byte(0)?, byte(2)?, byte(4)?, byte(6)?])),
            _ => None,
        };
    }
    Some(Rgba(match v {
        "white" => [255, 255, 255, 255],
        "black" => [0, 0, 0, 255],
        "red" => [255, 0, 0, 255],
        "green" => [0, 128, 0, 255],
        "blue" => [0, 0, 255, 255],
        "yellow" => [255, 255, 0, 255],
        "gray" | "grey" => [128, 128, 128, 255],
        "transparent" => [0, 0, 0, 0],
        "orange" => [255, 165, 0, 255],
        "purple" => [128, 0, 128, 255],
        "pink" => [255, 192, 203, 255],
        "brown" => [165, 42, 42, 255],
        "cyan" | "aqua" => [0, 255, 255, 255],
        "magenta" | "fuchsia" => [255, 0, 255, 255],
        "lime" => [0, 255, 0, 255],
        "navy" => [0, 0, 128, 255],
        "maroon" => [128, 0, 0, 255],
        "olive" => [128, 128, 0, 255],
        "teal" => [0, 128, 128, 255],
        "silver" => [192, 192, 192, 255],
        "gold" => [255, 215, 0, 255],
        "lightgray" | "lightgrey" => [211, 211, 211, 255],
        "darkgray" | "darkgrey" => [169, 169, 169, 255],
        _ => return None,
    }))
}

/// The output format for a request: `f_` first, then the URL's extension, else the source's
/// own format (`f_auto` keeps it too); formats nephos cannot encode become PNG.
pub fn output_format(plan: &Plan, extension: Option<&str>, source: &str) -> String {
    let wanted = match plan.format.as_deref() {
        Some("auto") | None => extension.unwrap_or(source),
        Some(f) => f,
    };
    match wanted {
        "jpeg" => "jpg".into(),
        "tif" => "tiff".into(),
        f if OUTPUT_FORMATS.contains(&f) => f.into(),
        _ => "png".into(),
    }
}

/// Decodes `bytes`, applies the plan and encodes as `format`; `max_pixels` bounds the source
/// and every intermediate result.
pub fn apply(bytes: &[u8], plan: &Plan, format: &str, max_pixels: u64) -> Result<Vec<u8>, String> {
    apply_bounded(
        bytes,
        plan,
        format,
        max_pixels,
        max_pixels.saturating_mul(8),
    )
}

/// The plan's steps applied to a decoded picture (a video frame, say).
pub fn apply_image(
    img: DynamicImage,
    plan: &Plan,
    max_pixels: u64,
) -> Result<DynamicImage, String> {
    let mut img = img;
    for step in &plan.steps {
        img = apply_step(img, step, max_pixels)?;
    }
    if let Some((settings, _)) = &plan.auto_width {
        if img.width() > settings.max_width {
            let k = f64::from(settings.max_width) / f64::from(img.width());
            let h = (f64::from(img.height()) * k).round().max(1.0) as u32;
            img = img.resize_exact(settings.max_width, h, imageops::FilterType::CatmullRom);
        }
    }
    Ok(img)
}

/// [`apply`], with the memory the decoded source may take bounded by `max_decode` bytes (a
/// 16-bit or many-channel image of allowed dimensions can still be too much).
pub fn apply_bounded(
    bytes: &[u8],
    plan: &Plan,
    format: &str,
    max_pixels: u64,
    max_decode: u64,
) -> Result<Vec<u8>, String> {
    if plan.video.is_some() {
        return Err("so_, eo_, du_, vs_ and dl_ apply to videos".into());
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("Cannot read the image: {e}"))?;
    let mut limits = image::Limits::default();
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format!("Cannot read the image: {e}"))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(format!(
            "The image is too large to transform ({w}x{h}; at most {max_pixels} pixels)"
        ));
    }
    // An animated GIF or WebP delivered as GIF or WebP stays animated: every frame is
    // transformed.
    if matches!(format, "gif" | "webp") && plan.page.is_none() && pages::is_animated(bytes) {
        if let Some(out) = animated(bytes, plan, format, max_pixels, (w, h), max_decode)? {
            return Ok(out);
        }
    }
    let reduced = if plan.page.is_none() && bytes.starts_with(&[0xFF, 0xD8]) {
        shrink_on_load(bytes, plan, max_decode)
    } else {
        None
    };
    let img = match plan.page {
        _ if reduced.is_some() => reduced.unwrap_or_default(),
        Some(n) if n > 1 || pages::is_animated(bytes) => {
            // Reaching frame n of an animation decodes the n frames before it.
            if pages::is_animated(bytes)
                && u64::from(n) * u64::from(w) * u64::from(h) > max_pixels.saturating_mul(4)
            {
                return Err(format!(
                    "Page {n} of a {w}x{h} animation is too much to decode (at most {} pixels)",
                    max_pixels.saturating_mul(4)
                ));
            }
            pages::page(bytes, n, max_pixels, max_decode)?
        }
        _ => {
            let mut reader = image::ImageReader::new(Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| format!("Cannot read the image: {e}"))?;
            let mut limits = image::Limits::default();
            limits.max_image_width = Some(side);
            limits.max_image_height = Some(side);
            limits.max_alloc = Some(max_decode);
            reader.limits(limits);
            reader.decode().map_err(|e| match e {
                image::ImageError::Limits(_) => format!(
                    "The image is too large to transform: decoding {w}x{h} needs more than {max_decode} bytes"
                ),
                e => format!("Cannot decode the image: {e}"),
            })?
        }
    };
    let img = apply_image(img, plan, max_pixels)?;
    encode(img, format, plan.encoding(is_lossy_source(bytes)))
}

thread_local! {
    /// When the render on this thread must stop (set by [`with_deadline`]).
    static DEADLINE: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Runs `work` (a render, on this thread) with a deadline: every step, layer and frame checks
/// it first, so a render whose answer has gone (past its deadline) stops within one step
/// instead of running to the end.
pub fn with_deadline<T>(deadline: std::time::Instant, work: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(None));
        }
    }
    DEADLINE.with(|d| d.set(Some(deadline)));
    let _reset = Reset;
    work()
}

/// The error of a render stopped at its deadline.
pub const PAST_DEADLINE: &str = "The transformation took longer than its deadline";

/// An error ([`PAST_DEADLINE`]) once the render's deadline (if any) has passed.
pub fn check_deadline() -> Result<(), String> {
    match DEADLINE.with(|d| d.get()) {
        Some(at) if std::time::Instant::now() >= at => Err(PAST_DEADLINE.into()),
        _ => Ok(()),
    }
}

fn apply_step(img: DynamicImage, s: &Step, max_pixels: u64) -> Result<DynamicImage, String> {
    check_deadline()?;
    if let Some(layer) = &s.overlay {
        return apply_overlay(img, s, layer, max_pixels);
    }
    // `a_auto_right`/`a_auto_left`: turned a quarter first when the asked width and height
    // are not oriented as the image is.
    let mut img = img;
    if let (Some(turn @ ("auto_right" | "auto_left")), Some(Dim::Px(w)), Some(Dim::Px(h))) =
        (s.angle.as_deref(), s.width, s.height)
    {
        let (iw, ih) = (img.width(), img.height());
        if w != h && iw != ih && (w > h) != (iw > ih) {
            img = if turn == "auto_right" {
                img.rotate90()
            } else {
                img.rotate270()
            };
        }
    }
    let (sw, sh) = (img.width() as f64, img.height() as f64);
    // Fractions are of the current size; dpr multiplies what was asked.
    let dim = |v: Option<Dim>, of: f64| {
        v.map(|v| match v {
            Dim::Px(n) => n,
            Dim::Of(k) => k * of,
        } * s.dpr)
    };
    let mut w = dim(s.width, sw);
    let mut h = dim(s.height, sh);
    if let Some(ar) = s.aspect {
        match (w, h) {
            (Some(w0), None) => h = Some(w0 / ar),
            (None, Some(h0)) => w = Some(h0 * ar),
            (None, None) => {
                // The largest box of that ratio inside the image.
                if sw / sh > ar {
                    (w, h) = (Some(sh * ar), Some(sh));
                } else {
                    (w, h) = (Some(sw), Some(sw / ar));
                }
            }
            _ => {}
        }
    }
    let px = |v: f64| v.round().clamp(1.0, f64::from(u32::MAX)) as u32;
    let too_big = |a: u32, b: u32| u64::from(a) * u64::from(b) > max_pixels;
    let fit_scale = |bw: Option<f64>, bh: Option<f64>| match (bw, bh) {
        (Some(bw), Some(bh)) => (bw / sw).min(bh / sh),
        (Some(bw), None) => bw / sw,
        (None, Some(bh)) => bh / sh,
        (None, None) => 1.0,
    };
    let resize = |img: &DynamicImage, nw: u32, nh: u32| -> Result<DynamicImage, String> {
        if too_big(nw, nh) {
            return Err(format!("The result would be too large ({nw}x{nh})"));
        }
        if (nw, nh) == (img.width(), img.height()) {
            return Ok(img.clone());
        }
        Ok(fast_resize(img, nw, nh))
    };
    let mut out = match s.crop {
        Mode::Scale => match (w, h) {
            (None, None) => img,
            (Some(bw), Some(bh)) => resize(&img, px(bw), px(bh))?,
            _ => {
                let k = fit_scale(w, h);
                resize(&img, px(sw * k), px(sh * k))?
            }
        },
        Mode::Fit | Mode::Limit | Mode::Mfit => {
            // mfit grows the image until it covers the box (never shrinks it).
            let k = match (s.crop, w, h) {
                (Mode::Mfit, Some(bw), Some(bh)) => (bw / sw).max(bh / sh),
                _ => fit_scale(w, h),
            };
            let skip = (s.crop == Mode::Limit && k >= 1.0) || (s.crop == Mode::Mfit && k <= 1.0);
            if skip {
                img
            } else {
                resize(&img, px(sw * k), px(sh * k))?
            }
        }
        Mode::Fill | Mode::Lfill => match (w, h) {
            (Some(bw), Some(bh)) => {
                let mut k = (bw / sw).max(bh / sh);
                let (mut bw, mut bh) = (bw, bh);
                if s.crop == Mode::Lfill && k > 1.0 {
                    k = 1.0;
                    (bw, bh) = (bw.min(sw), bh.min(sh));
                }
                let scaled = resize(&img, px(sw * k), px(sh * k))?;
                cut(&scaled, px(bw), px(bh), placement(s), None, None)
            }
            _ => {
                let k = fit_scale(w, h);
                resize(&img, px(sw * k), px(sh * k))?
            }
        },
        Mode::Pad | Mode::Lpad => match (w, h) {
            (Some(bw), Some(bh)) => {
                let mut k = (bw / sw).min(bh / sh);
                if s.crop == Mode::Lpad {
                    k = k.min(1.0);
                }
                let inner = resize(&img, px(sw * k), px(sh * k))?;
                let (cw, ch) = (px(bw), px(bh));
                if too_big(cw, ch) {
                    return Err(format!("The result would be too large ({cw}x{ch})"));
                }
                let mut canvas = RgbaImage::from_pixel(cw, ch, s.background);
                let dx = ((cw - inner.width().min(cw)) as f64 * s.anchor.0).round() as i64;
                let dy = ((ch - inner.height().min(ch)) as f64 * s.anchor.1).round() as i64;
                imageops::overlay(&mut canvas, &inner.to_rgba8(), dx, dy);
                DynamicImage::ImageRgba8(canvas)
            }
            _ => {
                let k = fit_scale(w, h);
                resize(&img, px(sw * k), px(sh * k))?
            }
        },
        Mode::Region => {
            let cw = w.map(px).unwrap_or(img.width());
            let ch = h.map(px).unwrap_or(img.height());
            cut(&img, cw, ch, placement(s), s.x, s.y)
        }
    };
    for e in &s.effects {
        // Effects that grow the canvas are checked before they allocate.
        let grows = match e {
            Effect::Shadow(_) => {
                let (dx, dy) = (
                    s.x.unwrap_or(15).clamp(-500, 500),
                    s.y.unwrap_or(15).clamp(-500, 500),
                );
                Some((dx.unsigned_abs() as u32 + 16, dy.unsigned_abs() as u32 + 16))
            }
            Effect::Outline(w) => Some((2 * w, 2 * w)),
            _ => None,
        };
        if let Some((gx, gy)) = grows {
            let (nw, nh) = (
                out.width().saturating_add(gx),
                out.height().saturating_add(gy),
            );
            if too_big(nw, nh) {
                return Err(format!("The result would be too large ({nw}x{nh})"));
            }
        }
        out = apply_effect(out, e, s.color, (s.x, s.y));
    }
    if let Some(radius) = s.radius {
        out = round_corners(out, radius);
    }
    if let Some(o) = s.opacity {
        let mut rgba = out.to_rgba8();
        for p in rgba.pixels_mut() {
            p[3] = (u16::from(p[3]) * u16::from(o) / 100) as u8;
        }
        out = DynamicImage::ImageRgba8(rgba);
    }
    if let Some((width, colour)) = s.border {
        let (w, h) = (out.width() + 2 * width, out.height() + 2 * width);
        if too_big(w, h) {
            return Err(format!("The result would be too large ({w}x{h})"));
        }
        let mut canvas = RgbaImage::from_pixel(w, h, colour);
        imageops::overlay(
            &mut canvas,
            &out.to_rgba8(),
            i64::from(width),
            i64::from(width),
        );
        out = DynamicImage::ImageRgba8(canvas);
    }
    out = match s.angle.as_deref() {
        Some("90") => out.rotate90(),
        Some("180") => out.rotate180(),
        Some("270") => out.rotate270(),
        Some("hflip") => out.fliph(),
        Some("vflip") => out.flipv(),
        Some("auto_right") | Some("auto_left") => out,
        Some(deg) => match deg.parse::<f64>() {
            Ok(d) if d != 0.0 => rotate(&out, d, s.background, max_pixels)?,
            _ => out,
        },
        None => out,
    };
    Ok(out)
}

/// A resize with a Catmull-Rom filter, by SIMD code (`fast_image_resize`) for the pixel
/// layouts it takes (alpha premultiplied on the way), else by the image crate's.
fn fast_resize(img: &DynamicImage, nw: u32, nh: u32) -> DynamicImage {
    use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
    let mut dst = DynamicImage::new(nw, nh, img.color());
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    match Resizer::new().resize(img, &mut dst, &options) {
        Ok(()) => dst,
        Err(_) => img.resize_exact(nw, nh, imageops::FilterType::CatmullRom),
    }
}

/// A JPEG decoded already reduced (by 2, 4 or 8, in its DCT) when the plan's first step
/// shrinks it at least that much, as libvips does: the rest of the work is on few pixels.
/// `None` when that does not apply (or the JPEG is not RGB or grey), to decode in full.
fn shrink_on_load(bytes: &[u8], plan: &Plan, max_decode: u64) -> Option<DynamicImage> {
    let first = plan.steps.first()?;
    if first.overlay.is_some()
        || first.x.is_some()
        || first.y.is_some()
        || first.aspect.is_some()
        || first.angle.is_some()
        || plan.auto_width.is_some()
        // Fractions are of the size decoded: they must see the full one.
        || matches!(first.width, Some(Dim::Of(_)))
        || matches!(first.height, Some(Dim::Of(_)))
        || !matches!(
            first.crop,
            Mode::Scale | Mode::Fit | Mode::Limit | Mode::Fill | Mode::Lfill | Mode::Pad | Mode::Lpad
        )
    {
        return None;
    }
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    // Beyond the decode memory, `None`: the full decode then refuses it with its reason.
    decoder.set_max_decoding_buffer_size(usize::try_from(max_decode).unwrap_or(usize::MAX));
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let (sw, sh) = (f64::from(info.width), f64::from(info.height));
    let px = |d: Option<Dim>, of: f64| {
        d.map(|d| match d {
            Dim::Px(n) => n,
            Dim::Of(k) => k * of,
        } * first.dpr)
    };
    let (w, h) = (px(first.width, sw), px(first.height, sh));
    // The factor the first step scales the image by.
    let k = match (first.crop, w, h) {
        (_, None, None) => return None,
        (Mode::Fill | Mode::Lfill, Some(w), Some(h)) => (w / sw).max(h / sh),
        (Mode::Scale, Some(w), Some(h)) => (w / sw).max(h / sh),
        (_, Some(w), Some(h)) => (w / sw).min(h / sh),
        (_, Some(w), None) => w / sw,
        (_, None, Some(h)) => h / sh,
    };
    if !(k > 0.0 && k <= 0.5) {
        return None;
    }
    let want = |v: f64| (v * k).ceil().clamp(1.0, 65535.0) as u16;
    let (dw, dh) = decoder.scale(want(sw), want(sh)).ok()?;
    let pixels = decoder.decode().ok()?;
    let (dw, dh) = (u32::from(dw), u32::from(dh));
    match decoder.info()?.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            image::RgbImage::from_raw(dw, dh, pixels).map(DynamicImage::ImageRgb8)
        }
        jpeg_decoder::PixelFormat::L8 => {
            image::GrayImage::from_raw(dw, dh, pixels).map(DynamicImage::ImageLuma8)
        }
        _ => None,
    }
}

/// Every frame of an animated GIF or WebP transformed and encoded as an animation in `format`
/// (GIF or WebP; delays kept, looping); `None` for an animation of one frame. The frames
/// decoded and made together are bounded by four times `max_pixels`.
fn animated(
    bytes: &[u8],
    plan: &Plan,
    format: &str,
    max_pixels: u64,
    (w, h): (u32, u32),
    max_decode: u64,
) -> Result<Option<Vec<u8>>, String> {
    use image::Frame;
    // Frames decoded and made are held together (RGBA, in and out): within the decode memory.
    let budget = max_pixels.saturating_mul(4).min(max_decode / 8);
    let per_frame = (u64::from(w) * u64::from(h)).max(1);
    let most = (budget / per_frame).clamp(1, u64::from(MAX_PAGE)) as usize;
    let Some(decoded) = pages::frames(bytes)? else {
        return Ok(None);
    };
    let mut frames = Vec::new();
    for frame in decoded {
        check_deadline()?;
        if frames.len() == most {
            return Err(format!(
                "The animation has too many frames to transform (at most {most} of {w}x{h})"
            ));
        }
        frames.push(frame.map_err(|e| format!("Cannot decode the image: {e}"))?);
    }
    if frames.len() < 2 {
        return Ok(None);
    }
    let mut made: Vec<Frame> = Vec::with_capacity(frames.len());
    let mut made_pixels = 0u64;
    for frame in frames {
        let delay = frame.delay();
        let img = apply_image(
            DynamicImage::ImageRgba8(frame.into_buffer()),
            plan,
            max_pixels,
        )?;
        made_pixels += u64::from(img.width()) * u64::from(img.height());
        if made_pixels > budget {
            return Err(format!(
                "The transformed animation would be too large (at most {budget} pixels in all)"
            ));
        }
        made.push(Frame::from_parts(img.to_rgba8(), 0, 0, delay));
    }
    pages::encode_animation(made, format, plan.encoding(is_lossy_source(bytes))).map(Some)
}

/// How many pages an image has (frames of an animated GIF or WebP, pages of a TIFF),
/// counting at most `MAX_PAGE`.
pub fn page_count(bytes: &[u8]) -> Result<u32, String> {
    pages::count(bytes, MAX_PAGE)
}

/// The size of a `w`×`h` image turned by `degrees` (its bounding box).
pub fn rotated_size(w: u32, h: u32, degrees: f64) -> (u32, u32) {
    let (sin, cos) = degrees.to_radians().sin_cos();
    let (w, h) = (f64::from(w), f64::from(h));
    let nw = (w * cos.abs() + h * sin.abs()).round().max(1.0);
    let nh = (w * sin.abs() + h * cos.abs()).round().max(1.0);
    (nw as u32, nh as u32)
}

/// Turns an image clockwise by any angle into its bounding box (bilinear sampling; the corners
/// are transparent).
fn rotate(
    img: &DynamicImage,
    degrees: f64,
    _background: Rgba<u8>,
    max_pixels: u64,
) -> Result<DynamicImage, String> {
    let src = img.to_rgba8();
    let (w, h) = (src.width(), src.height());
    let (nw, nh) = rotated_size(w, h, degrees);
    if u64::from(nw) * u64::from(nh) > max_pixels {
        return Err(format!("The result would be too large ({nw}x{nh})"));
    }
    let (sin, cos) = degrees.to_radians().sin_cos();
    let (cx, cy) = (f64::from(w) / 2.0, f64::from(h) / 2.0);
    let (ncx, ncy) = (f64::from(nw) / 2.0, f64::from(nh) / 2.0);
    let mut out = RgbaImage::from_pixel(nw, nh, Rgba([0, 0, 0, 0]));
    let sample = |x: i64, y: i64| -> [f64; 4] {
        if x < 0 || y < 0 || x >= i64::from(w) || y >= i64::from(h) {
            return [0.0; 4];
        }
        let p = src.get_pixel(x as u32, y as u32);
        [p[0], p[1], p[2], p[3]].map(f64::from)
    };
    for (ox, oy, px) in out.enumerate_pixels_mut() {
        let dx = f64::from(ox) + 0.5 - ncx;
        let dy = f64::from(oy) + 0.5 - ncy;
        // The inverse (counter-clockwise) turn finds where the pixel comes from.
        let sx = dx * cos + dy * sin + cx - 0.5;
        let sy = -dx * sin + dy * cos + cy - 0.5;
        if sx < -1.0 || sy < -1.0 || sx > f64::from(w) || sy > f64::from(h) {
            continue;
        }
        let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
        let (fx, fy) = (sx - sx.floor(), sy - sy.floor());
        let (a, b, c, d) = (
            sample(x0, y0),
            sample(x0 + 1, y0),
            sample(x0, y0 + 1),
            sample(x0 + 1, y0 + 1),
        );
        let mut v = [0u8; 4];
        for i in 0..4 {
            let top = a[i] * (1.0 - fx) + b[i] * fx;
            let bottom = c[i] * (1.0 - fx) + d[i] * fx;
            v[i] = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
        }
        *px = Rgba(v);
    }
    Ok(DynamicImage::ImageRgba8(out))
}

fn effect(item: &str, value: &str) -> Result<Effect, String> {
    // Effects whose arguments are not one level.
    if let Some(args) = value.strip_prefix("replace_color:") {
        let mut parts = args.split(':');
        let to = parts.next().and_then(color_name).ok_or_else(|| {
            invalid(
                item,
                "expected replace_color:<to colour>[:tolerance][:from colour]",
            )
        })?;
        let tolerance = match parts.next() {
            None => 50.0,
            Some(t) => t
                .parse::<f32>()
                .ok()
                .filter(|t| (0.0..=100.0).contains(t))
                .ok_or_else(|| invalid(item, "the tolerance must be between 0 and 100"))?,
        };
        let from = match parts.next() {
            None => None,
            Some(f) => Some(color_name(f).ok_or_else(|| invalid(item, "unknown colour"))?),
        };
        return Ok(Effect::ReplaceColor {
            to,
            tolerance,
            from,
        });
    }
    if value == "outline" || value.starts_with("outline:") {
        // `outline[:outer|inner|fill][:width][:blur]`: the width is what nephos draws.
        let width = value
            .split(':')
            .skip(1)
            .find_map(|p| p.parse::<u32>().ok())
            .unwrap_or(5);
        if !(1..=100).contains(&width) {
            return Err(invalid(item, "the width must be between 1 and 100"));
        }
        return Ok(Effect::Outline(width));
    }
    let (name, level) = match value.split_once(':') {
        Some((n, l)) => (
            n,
            Some(
                l.parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| invalid(item, "expected a number"))?,
            ),
        ),
        None => (value, None),
    };
    // A level within Cloudinary's range for the effect (else a 400 naming it).
    let within = |default: f32, lo: f32, hi: f32| -> Result<f32, String> {
        let v = level.unwrap_or(default);
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(invalid(
                item,
                &format!("the level must be between {lo} and {hi}"),
            ))
        }
    };
    Ok(match name {
        "grayscale" => Effect::Grayscale,
        "negate" => Effect::Negate,
        "sepia" => Effect::Sepia(within(80.0, 0.0, 100.0)? / 100.0),
        "blur" => Effect::Blur(within(100.0, 1.0, 2000.0)?),
        "sharpen" => Effect::Sharpen(within(100.0, 1.0, 2000.0)?),
        "blackwhite" => Effect::BlackWhite(within(50.0, 0.0, 100.0)?),
        "brightness" => Effect::Brightness(within(80.0, -99.0, 100.0)?),
        "contrast" => Effect::Contrast(within(0.0, -100.0, 100.0)?),
        "saturation" => Effect::Saturation(within(80.0, -100.0, 100.0)?),
        "gamma" => Effect::Gamma(within(0.0, -50.0, 150.0)?),
        "pixelate" => Effect::Pixelate(within(5.0, 1.0, 200.0)? as u32),
        "colorize" => Effect::Colorize(within(100.0, 0.0, 100.0)?),
        "vignette" => Effect::Vignette(within(20.0, 0.0, 100.0)?),
        "auto_contrast" | "improve" => Effect::AutoContrast,
        "trim" => Effect::Trim(within(10.0, 0.0, 100.0)?),
        "shadow" => Effect::Shadow(within(40.0, 0.0, 100.0)?),
        _ => {
            return Err(format!(
                "Transformation {item} is not supported by this server"
            ))
        }
    })
}

/// Applies `f` to the colour channels of every pixel (alpha kept).
fn map_rgb(img: DynamicImage, f: impl Fn([f32; 3]) -> [f32; 3]) -> DynamicImage {
    let mut img = img.to_rgba8();
    for p in img.pixels_mut() {
        let out = f([f32::from(p[0]), f32::from(p[1]), f32::from(p[2])]);
        for c in 0..3 {
            p[c] = out[c].round().clamp(0.0, 255.0) as u8;
        }
    }
    DynamicImage::ImageRgba8(img)
}

fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// A colour written as a name or hex (`red`, `rgb:ff0000`, `ff0000`).
fn color_name(v: &str) -> Option<Rgba<u8>> {
    color(v).or_else(|| {
        (v.len() == 6 || v.len() == 3)
            .then(|| color(&format!("rgb:{v}")))
            .flatten()
    })
}

fn apply_effect(
    img: DynamicImage,
    e: &Effect,
    color: Option<Rgba<u8>>,
    offset: (Option<i64>, Option<i64>),
) -> DynamicImage {
    match e {
        Effect::Shadow(strength) => {
            let c = color.unwrap_or(Rgba([80, 80, 80, 255]));
            shadow(
                img,
                *strength,
                c,
                (offset.0.unwrap_or(15), offset.1.unwrap_or(15)),
            )
        }
        Effect::Outline(width) => outline(img, *width, color.unwrap_or(Rgba([0, 0, 0, 255]))),
        Effect::ReplaceColor {
            to,
            tolerance,
            from,
        } => replace_color(img, *to, *tolerance, *from),
        Effect::BlackWhite(t) => {
            let cut = t * 255.0 / 100.0;
            map_rgb(img, |c| {
                let v = if luma(c) >= cut { 255.0 } else { 0.0 };
                [v, v, v]
            })
        }
        Effect::Brightness(l) => {
            let add = l * 255.0 / 100.0;
            map_rgb(img, |c| c.map(|v| v + add))
        }
        Effect::Contrast(l) => {
            let k = (100.0 + l) / 100.0;
            map_rgb(img, |c| c.map(|v| (v - 128.0) * k + 128.0))
        }
        Effect::Saturation(l) => {
            let k = 1.0 + l / 100.0;
            map_rgb(img, |c| {
                let y = luma(c);
                c.map(|v| y + (v - y) * k)
            })
        }
        Effect::Gamma(l) => {
            let exponent = 1.0 / (1.0 + l / 100.0).max(0.01);
            map_rgb(img, |c| c.map(|v| 255.0 * (v / 255.0).powf(exponent)))
        }
        Effect::Pixelate(size) => {
            let (w, h) = (img.width(), img.height());
            let (sw, sh) = ((w / size).max(1), (h / size).max(1));
            img.resize_exact(sw, sh, imageops::FilterType::Triangle)
                .resize_exact(w, h, imageops::FilterType::Nearest)
        }
        Effect::Colorize(l) => {
            let k = l / 100.0;
            let to = color.unwrap_or(Rgba([0, 0, 0, 255]));
            map_rgb(img, |c| {
                [0, 1, 2].map(|i| c[i] * (1.0 - k) + f32::from(to[i]) * k)
            })
        }
        Effect::Vignette(l) => {
            let k = l / 100.0;
            let mut img = img.to_rgba8();
            let (w, h) = (img.width() as f32, img.height() as f32);
            for (x, y, p) in img.enumerate_pixels_mut() {
                let dx = (x as f32 + 0.5) / w - 0.5;
                let dy = (y as f32 + 0.5) / h - 0.5;
                // 0 at the centre, 1 in the corners.
                let d = ((dx * dx + dy * dy) * 2.0).sqrt();
                let shade = 1.0 - k * d.powi(2);
                for c in 0..3 {
                    p[c] = (f32::from(p[c]) * shade).clamp(0.0, 255.0) as u8;
                }
            }
            DynamicImage::ImageRgba8(img)
        }
        Effect::AutoContrast => {
            let rgba = img.to_rgba8();
            let (mut lo, mut hi) = ([255u8; 3], [0u8; 3]);
            for p in rgba.pixels() {
                for c in 0..3 {
                    lo[c] = lo[c].min(p[c]);
                    hi[c] = hi[c].max(p[c]);
                }
            }
            map_rgb(DynamicImage::ImageRgba8(rgba), |c| {
                [0, 1, 2].map(|i| {
                    let span = f32::from(hi[i]) - f32::from(lo[i]);
                    if span < 1.0 {
                        c[i]
                    } else {
                        (c[i] - f32::from(lo[i])) * 255.0 / span
                    }
                })
            })
        }
        Effect::Trim(tolerance) => trim(img, *tolerance),
        Effect::Grayscale => DynamicImage::ImageLumaA8(img.to_luma_alpha8()),
        Effect::Negate => {
            let mut img = img.to_rgba8();
            for p in img.pixels_mut() {
                for c in 0..3 {
                    p[c] = 255 - p[c];
                }
            }
            DynamicImage::ImageRgba8(img)
        }
        Effect::Sepia(level) => {
            let mut img = img.to_rgba8();
            for p in img.pixels_mut() {
                let (r, g, b) = (f32::from(p[0]), f32::from(p[1]), f32::from(p[2]));
                let toned = [
                    0.393 * r + 0.769 * g + 0.189 * b,
                    0.349 * r + 0.686 * g + 0.168 * b,
                    0.272 * r + 0.534 * g + 0.131 * b,
                ];
                for c in 0..3 {
                    let v = f32::from(p[c]) * (1.0 - level) + toned[c] * level;
                    p[c] = v.clamp(0.0, 255.0) as u8;
                }
            }
            DynamicImage::ImageRgba8(img)
        }
        // Cloudinary's strengths run to 2000; as a Gaussian sigma, 100 reads as 5 pixels.
        // A box-blur approximation keeps the cost independent of the strength.
        Effect::Blur(strength) => img.fast_blur(strength / 20.0),
        // The radius grows with the strength up to a bound: the cost stays bounded too.
        Effect::Sharpen(strength) => img.unsharpen((strength / 100.0).min(3.0), 0),
    }
}

/// The image over a blurred copy of its shape in `colour`, moved by `offset`; the canvas
/// grows to hold both.
fn shadow(img: DynamicImage, strength: f32, colour: Rgba<u8>, offset: (i64, i64)) -> DynamicImage {
    let base = img.to_rgba8();
    let (w, h) = base.dimensions();
    let (dx, dy) = (offset.0.clamp(-500, 500), offset.1.clamp(-500, 500));
    let pad = 8u32;
    let cw = w + dx.unsigned_abs() as u32 + 2 * pad;
    let ch = h + dy.unsigned_abs() as u32 + 2 * pad;
    let mut shape = RgbaImage::new(cw, ch);
    let (sx, sy) = (pad as i64 + dx.max(0), pad as i64 + dy.max(0));
    let k = strength / 100.0;
    for (x, y, p) in base.enumerate_pixels() {
        let a = (f32::from(p[3]) * k) as u8;
        if a > 0 {
            shape.put_pixel(
                (sx + i64::from(x)) as u32,
                (sy + i64::from(y)) as u32,
                Rgba([colour[0], colour[1], colour[2], a]),
            );
        }
    }
    let mut canvas = DynamicImage::ImageRgba8(shape).fast_blur(3.0).to_rgba8();
    imageops::overlay(
        &mut canvas,
        &base,
        pad as i64 + (-dx).max(0),
        pad as i64 + (-dy).max(0),
    );
    DynamicImage::ImageRgba8(canvas)
}

/// The image on its shape grown by `width` pixels in `colour` (the canvas grows by as much).
fn outline(img: DynamicImage, width: u32, colour: Rgba<u8>) -> DynamicImage {
    let base = img.to_rgba8();
    let (w, h) = base.dimensions();
    let (cw, ch) = (w + 2 * width, h + 2 * width);
    // The shape's alpha on the larger canvas, grown by a separable maximum.
    let (cwu, chu) = (cw as usize, ch as usize);
    let mut alpha = vec![0u8; cwu * chu];
    for (x, y, p) in base.enumerate_pixels() {
        alpha[(y + width) as usize * cwu + (x + width) as usize] = p[3];
    }
    let r = width as usize;
    let grow_rows = |src: &[u8]| -> Vec<u8> {
        let mut out = vec![0u8; src.len()];
        for y in 0..ch as usize {
            let row = &src[y * cw as usize..(y + 1) * cw as usize];
            for x in 0..cw as usize {
                let lo = x.saturating_sub(r);
                let hi = (x + r + 1).min(cw as usize);
                out[y * cw as usize + x] = row[lo..hi].iter().copied().max().unwrap_or(0);
            }
        }
        out
    };
    let rows = grow_rows(&alpha);
    let mut grown = vec![0u8; rows.len()];
    for x in 0..cw as usize {
        for y in 0..ch as usize {
            let lo = y.saturating_sub(r);
            let hi = (y + r + 1).min(ch as usize);
            grown[y * cw as usize + x] = (lo..hi)
                .map(|yy| rows[yy * cw as usize + x])
                .max()
                .unwrap_or(0);
        }
    }
    let mut canvas = RgbaImage::from_fn(cw, ch, |x, y| {
        let a = grown[y as usize * cwu + x as usize];
        Rgba([
            colour[0],
            colour[1],
            colour[2],
            ((u16::from(a) * u16::from(colour[3])) / 255) as u8,
        ])
    });
    imageops::overlay(&mut canvas, &base, i64::from(width), i64::from(width));
    DynamicImage::ImageRgba8(canvas)
}

/// Pixels within `tolerance` (0–100 of the RGB distance) of `from` (else the most common
/// colour, counted at 5 bits a channel) take `to`, keeping their alpha.
fn replace_color(
    img: DynamicImage,
    to: Rgba<u8>,
    tolerance: f32,
    from: Option<Rgba<u8>>,
) -> DynamicImage {
    let mut img = img.to_rgba8();
    let from = from.unwrap_or_else(|| {
        let mut counts = std::collections::HashMap::<(u8, u8, u8), u32>::new();
        for p in img.pixels().filter(|p| p[3] > 0) {
            *counts.entry((p[0] >> 3, p[1] >> 3, p[2] >> 3)).or_default() += 1;
        }
        let ((r, g, b), _) = counts
            .into_iter()
            .max_by_key(|(k, n)| (*n, *k))
            .unwrap_or(((0, 0, 0), 0));
        Rgba([(r << 3) | 4, (g << 3) | 4, (b << 3) | 4, 255])
    });
    let limit = tolerance / 100.0 * 441.7;
    for p in img.pixels_mut() {
        let d = (0..3)
            .map(|c| (f32::from(p[c]) - f32::from(from[c])).powi(2))
            .sum::<f32>()
            .sqrt();
        if d <= limit {
            p[0] = to[0];
            p[1] = to[1];
            p[2] = to[2];
        }
    }
    DynamicImage::ImageRgba8(img)
}

/// Cuts away the borders whose pixels are within `tolerance` (0–100) of the top-left pixel.
fn trim(img: DynamicImage, tolerance: f32) -> DynamicImage {
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    if w == 0 || h == 0 {
        return img;
    }
    let corner = *rgba.get_pixel(0, 0);
    let limit = tolerance / 100.0 * 255.0;
    let same = |x: u32, y: u32| {
        let p = rgba.get_pixel(x, y);
        (0..4).all(|c| (f32::from(p[c]) - f32::from(corner[c])).abs() <= limit)
    };
    let row_same = |y: u32| (0..w).all(|x| same(x, y));
    let col_same = |x: u32, top: u32, bottom: u32| (top..bottom).all(|y| same(x, y));
    let mut top = 0;
    while top < h && row_same(top) {
        top += 1;
    }
    if top == h {
        return img;
    }
    let mut bottom = h;
    while bottom > top && row_same(bottom - 1) {
        bottom -= 1;
    }
    let mut left = 0;
    while left < w && col_same(left, top, bottom) {
        left += 1;
    }
    let mut right = w;
    while right > left && col_same(right - 1, top, bottom) {
        right -= 1;
    }
    img.crop_imm(left, top, right - left, bottom - top)
}

/// Makes the corners outside a radius (or the ellipse, for `max`) transparent.
fn round_corners(img: DynamicImage, radius: Option<u32>) -> DynamicImage {
    let mut img = img.to_rgba8();
    let (w, h) = (img.width() as f32, img.height() as f32);
    let (rx, ry) = match radius {
        None => (w / 2.0, h / 2.0),
        Some(r) => {
            let r = (r as f32).min(w / 2.0).min(h / 2.0);
            (r, r)
        }
    };
    if rx <= 0.0 || ry <= 0.0 {
        return DynamicImage::ImageRgba8(img);
    }
    for (x, y, p) in img.enumerate_pixels_mut() {
        // The pixel's centre, relative to the nearest corner circle's centre.
        let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
        let cx = if px < rx {
            rx
        } else if px > w - rx {
            w - rx
        } else {
            px
        };
        let cy = if py < ry {
            ry
        } else if py > h - ry {
            h - ry
        } else {
            py
        };
        let (dx, dy) = ((px - cx) / rx, (py - cy) / ry);
        if dx * dx + dy * dy > 1.0 {
            p[3] = 0;
        }
    }
    DynamicImage::ImageRgba8(img)
}

/// Where a crop goes: by the gravity's edge, or centred on what the gravity follows.
#[derive(Debug, Clone, Copy)]
enum Placement {
    Anchor((f64, f64)),
    Centre((f64, f64)),
}

fn placement(s: &Step) -> Placement {
    match s.focus {
        Some(c) => Placement::Centre(c),
        None => Placement::Anchor(s.anchor),
    }
}

/// A `w`×`h` region (at most the image), at `x`/`y` when given, else placed as `at` says.
fn cut(
    img: &DynamicImage,
    w: u32,
    h: u32,
    at: Placement,
    x: Option<i64>,
    y: Option<i64>,
) -> DynamicImage {
    let (iw, ih) = (img.width(), img.height());
    let (w, h) = (w.min(iw), h.min(ih));
    let place = |given: Option<i64>, free: u32, size: u32, whole: u32, axis: usize| match given {
        Some(v) => v.clamp(0, i64::from(free)) as u32,
        None => match at {
            Placement::Anchor(a) => {
                let a = if axis == 0 { a.0 } else { a.1 };
                (f64::from(free) * a).round() as u32
            }
            Placement::Centre(c) => {
                let c = if axis == 0 { c.0 } else { c.1 };
                (c * f64::from(whole) - f64::from(size) / 2.0)
                    .round()
                    .clamp(0.0, f64::from(free)) as u32
            }
        },
    };
    let left = place(x, iw - w, w, iw, 0);
    let top = place(y, ih - h, h, ih, 1);
    img.crop_imm(left, top, w, h)
}

/// The picture written as `format`: JPEG and AVIF at the encoding's quality, WebP lossy or
/// lossless as it says, the others lossless.
pub fn encode(img: DynamicImage, format: &str, encoding: Encoding) -> Result<Vec<u8>, String> {
    let quality = encoding.quality;
    let mut out = Cursor::new(Vec::new());
    let failed = |e: image::ImageError| format!("Cannot encode {format}: {e}");
    match format {
        "jpg" => {
            // JPEG has no alpha: transparent pixels are laid on white.
            let rgba = img.to_rgba8();
            let mut flat = image::RgbImage::new(rgba.width(), rgba.height());
            for (p, q) in rgba.pixels().zip(flat.pixels_mut()) {
                let a = u16::from(p[3]);
                for c in 0..3 {
                    q[c] = ((u16::from(p[c]) * a + 255 * (255 - a)) / 255) as u8;
                }
            }
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
                .encode_image(&flat)
                .map_err(failed)?;
        }
        "png" => img.write_to(&mut out, ImageFormat::Png).map_err(failed)?,
        "webp" => return webp_encode::still(&img, encoding),
        // `f_auto` gives WebP to pictures too large for AVIF.
        "avif" if encoding.auto_format && !avif_encode::fits(img.width(), img.height()) => {
            return webp_encode::still(&img, encoding)
        }
        "avif" => return avif_encode::still(&img, quality),
        "gif" => DynamicImage::ImageRgba8(img.to_rgba8())
            .write_to(&mut out, ImageFormat::Gif)
            .map_err(failed)?,
        "bmp" => DynamicImage::ImageRgba8(img.to_rgba8())
            .write_to(&mut out, ImageFormat::Bmp)
            .map_err(failed)?,
        "tiff" => DynamicImage::ImageRgba8(img.to_rgba8())
            .write_to(&mut out, ImageFormat::Tiff)
            .map_err(failed)?,
        other => return Err(format!("Cannot encode {other}")),
    }
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(w: u32, h: u32) -> Vec<u8> {
        let img = RgbaImage::from_fn(w, h, |x, y| {
            Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(img)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    fn size_after(t: &str, w: u32, h: u32) -> (u32, u32) {
        let plan = parse(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        let bytes =
            apply(&source(w, h), &plan, "png", 50_000_000).unwrap_or_else(|e| panic!("{t}: {e}"));
        let img = image::load_from_memory(&bytes).unwrap();
        (img.width(), img.height())
    }

    #[test]
    fn crop_modes_give_cloudinarys_sizes() {
        let cases = [
            ("w_100", (100, 50)),
            ("h_50", (100, 50)),
            ("w_100,h_100", (100, 100)),
            ("c_scale,w_0.5", (100, 50)),
            ("c_fit,w_100,h_100", (100, 50)),
            ("c_limit,w_1000,h_1000", (200, 100)),
            ("c_limit,w_50", (50, 25)),
            ("c_mfit,w_400,h_400", (800, 400)),
            ("c_fill,w_100,h_100", (100, 100)),
            ("c_thumb,g_face,w_60,h_80", (60, 80)),
            ("c_lfill,w_400,h_50", (200, 50)),
            ("c_pad,w_300,h_300,b_black", (300, 300)),
            ("c_lpad,w_300,h_300", (300, 300)),
            ("c_crop,w_30,h_40,x_10,y_10", (30, 40)),
            ("c_crop,g_south_east,w_500,h_40", (200, 40)),
            ("ar_1:1,c_fill,w_80", (80, 80)),
            ("c_crop,ar_1", (100, 100)),
            ("w_50,dpr_2.0", (100, 50)),
            ("c_fill,h_100,w_100/c_scale,w_10", (10, 10)),
            ("a_90", (100, 200)),
            ("e_grayscale,q_auto,f_auto", (200, 100)),
            ("e_sepia,e_blur:300,e_sharpen,e_negate", (200, 100)),
            ("w_100/r_max,o_50", (100, 50)),
            ("r_10,bo_4px_solid_rgb:00ff00", (208, 108)),
        ];
        for (t, want) in cases {
            assert_eq!(size_after(t, 200, 100), want, "{t}");
        }
    }

    #[test]
    fn pixels_land_where_cloudinary_puts_them() {
        // c_crop at x/y keeps the source pixels of that region.
        let plan = parse("c_crop,w_2,h_2,x_7,y_3").unwrap();
        let img =
            image::load_from_memory(&apply(&source(20, 10), &plan, "png", 1_000_000).unwrap())
                .unwrap()
                .to_rgba8();
        assert_eq!(img.get_pixel(0, 0).0, [7, 3, 90, 255]);
        // Padding is filled with the background.
        let plan = parse("c_pad,w_20,h_20,b_rgb:ff0000").unwrap();
        let img =
            image::load_from_memory(&apply(&source(20, 10), &plan, "png", 1_000_000).unwrap())
                .unwrap()
                .to_rgba8();
        assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0, 255]);
        assert_eq!(img.get_pixel(0, 10).0[2], 90);
    }

    fn grey(level: u8) -> Vec<u8> {
        let img = RgbaImage::from_pixel(8, 8, Rgba([level, level, level, 255]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(img)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    fn first_pixel(bytes: &[u8], t: &str) -> [u8; 4] {
        let out = apply(bytes, &parse(t).unwrap(), "png", 1_000_000).unwrap();
        image::load_from_memory(&out)
            .unwrap()
            .to_rgba8()
            .get_pixel(0, 0)
            .0
    }

    #[test]
    fn colour_effects_move_levels_as_documented() {
        let mid = grey(100);
        assert_eq!(first_pixel(&mid, "e_blackwhite"), [0, 0, 0, 255]);
        assert_eq!(first_pixel(&mid, "e_blackwhite:30"), [255, 255, 255, 255]);
        assert_eq!(first_pixel(&mid, "e_brightness:20"), [151, 151, 151, 255]);
        assert_eq!(first_pixel(&mid, "e_brightness:-20"), [49, 49, 49, 255]);
        assert_eq!(first_pixel(&mid, "e_contrast:100"), [72, 72, 72, 255]);
        assert_eq!(first_pixel(&mid, "e_contrast:-100"), [128, 128, 128, 255]);
        assert!(first_pixel(&mid, "e_gamma:100")[0] > 100);
        assert!(first_pixel(&mid, "e_gamma:-40")[0] < 100);
        assert_eq!(first_pixel(&mid, "e_colorize:100,co_red"), [255, 0, 0, 255]);
        assert_eq!(
            first_pixel(&mid, "e_colorize:50,co_rgb:0000ff"),
            [50, 50, 178, 255]
        );
        // Grey has no saturation to change.
        assert_eq!(first_pixel(&mid, "e_saturation:100"), [100, 100, 100, 255]);
        for bad in [
            "e_brightness:200",
            "e_gamma:-60",
            "e_pixelate:0",
            "e_contrast:x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shadow_outline_and_replace_color() {
        // Shadow: the canvas grows by the offset (and a blur margin); the image keeps its place.
        assert_eq!(size_of(&grey(100), "e_shadow"), (8 + 15 + 16, 8 + 15 + 16));
        assert_eq!(
            size_of(&grey(100), "e_shadow:50,x_-4,y_6"),
            (8 + 4 + 16, 8 + 6 + 16)
        );
        // Outline: grown by its width on every side, in co_.
        let out = apply(
            &grey(100),
            &parse("co_red,e_outline:3").unwrap(),
            "png",
            1_000_000,
        )
        .unwrap();
        let img = image::load_from_memory(&out).unwrap().to_rgba8();
        assert_eq!(img.dimensions(), (14, 14));
        assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0, 255]);
        assert_eq!(img.get_pixel(7, 7).0, [100, 100, 100, 255]);
        assert_eq!(size_of(&grey(100), "e_outline:outer:2:200"), (12, 12));
        // Replace colour: the most common one by default, or the one named.
        assert_eq!(
            first_pixel(&grey(100), "e_replace_color:red"),
            [255, 0, 0, 255]
        );
        assert_eq!(
            first_pixel(&grey(100), "e_replace_color:00ff00:10:646464"),
            [0, 255, 0, 255]
        );
        assert_eq!(
            first_pixel(&grey(100), "e_replace_color:00ff00:1:ffffff"),
            [100, 100, 100, 255]
        );
        for bad in [
            "e_replace_color:nocolour",
            "e_replace_color:red:200",
            "e_outline:0",
            "e_shadow:300",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trim_pixelate_and_vignette() {
        // A 20×10 white image with a 4×2 red block at (6, 3).
        let img = RgbaImage::from_fn(20, 10, |x, y| {
            if (6..10).contains(&x) && (3..5).contains(&y) {
                Rgba([255, 0, 0, 255])
            } else {
                Rgba([255, 255, 255, 255])
            }
        });
        let mut bytes = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(img)
            .write_to(&mut bytes, ImageFormat::Png)
            .unwrap();
        let bytes = bytes.into_inner();
        assert_eq!(size_of(&bytes, "e_trim"), (4, 2));
        assert_eq!(size_of(&bytes, "e_pixelate:5"), (20, 10));
        let v = apply(
            &grey(200),
            &parse("e_vignette:100").unwrap(),
            "png",
            1_000_000,
        )
        .unwrap();
        let v = image::load_from_memory(&v).unwrap().to_rgba8();
        assert!(
            v.get_pixel(0, 0).0[0] < v.get_pixel(4, 4).0[0],
            "corners darker"
        );
    }

    fn size_of(bytes: &[u8], t: &str) -> (u32, u32) {
        let out = apply(bytes, &parse(t).unwrap(), "png", 1_000_000).unwrap();
        let img = image::load_from_memory(&out).unwrap();
        (img.width(), img.height())
    }

    #[test]
    fn gravity_follows_stored_faces_and_auto_turns() {
        // 100×20: a face at x 80..90.
        let mut p = parse("c_fill,g_face,w_20,h_20").unwrap();
        p.set_focus(&[[80.0, 5.0, 10.0, 10.0]], &[], 100.0, 20.0);
        let img = RgbaImage::from_fn(100, 20, |x, _| Rgba([x as u8, 0, 0, 255]));
        let mut bytes = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(img)
            .write_to(&mut bytes, ImageFormat::Png)
            .unwrap();
        let bytes = bytes.into_inner();
        let out = apply(&bytes, &p, "png", 1_000_000).unwrap();
        let out = image::load_from_memory(&out).unwrap().to_rgba8();
        // Centred on x = 85: the crop starts at 75.
        assert_eq!(out.get_pixel(0, 0).0[0], 75);
        // Without faces: the centre.
        let mut p = parse("c_fill,g_faces,w_20,h_20").unwrap();
        p.set_focus(&[], &[], 100.0, 20.0);
        let out = apply(&bytes, &p, "png", 1_000_000).unwrap();
        assert_eq!(
            image::load_from_memory(&out)
                .unwrap()
                .to_rgba8()
                .get_pixel(0, 0)
                .0[0],
            40
        );
        // a_auto_right turns a landscape image asked as portrait.
        assert_eq!(size_of(&bytes, "a_auto_right,c_fit,w_10,h_50"), (10, 50));
        assert_eq!(size_of(&bytes, "c_fit,w_10,h_50"), (10, 2));
        assert_eq!(size_of(&bytes, "a_auto_right,c_fit,w_50,h_10"), (50, 10));
    }

    #[test]
    fn jpegs_shrink_on_load_to_the_same_sizes() {
        let img = image::RgbImage::from_fn(800, 600, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 77])
        });
        let mut jpeg = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img)
            .write_to(&mut jpeg, ImageFormat::Jpeg)
            .unwrap();
        let jpeg = jpeg.into_inner();
        for (t, size) in [
            ("c_scale,w_100", (100, 75)),
            ("c_fill,h_90,w_90", (90, 90)),
            ("c_fit,h_100,w_100", (100, 75)),
            ("c_pad,h_100,w_100", (100, 100)),
            ("c_scale,w_0.1", (80, 60)),
            ("c_scale,h_150,w_390", (390, 150)),
        ] {
            let plan = parse(t).unwrap();
            if !t.contains("0.1") {
                assert!(shrink_on_load(&jpeg, &plan, u64::MAX).is_some(), "{t}");
            } else {
                assert!(shrink_on_load(&jpeg, &plan, u64::MAX).is_none(), "{t}");
            }
            assert_eq!(size_of(&jpeg, t), size, "{t}");
        }
        // Not for crops at coordinates or small reductions.
        assert!(shrink_on_load(
            &jpeg,
            &parse("c_crop,w_100,h_100,x_10,y_10").unwrap(),
            u64::MAX
        )
        .is_none());
        assert!(shrink_on_load(&jpeg, &parse("c_scale,w_500").unwrap(), u64::MAX).is_none());
        // Nor beyond the decode memory.
        assert!(shrink_on_load(&jpeg, &parse("c_scale,w_100").unwrap(), 1000).is_none());
    }

    #[test]
    fn layers_group_until_layer_apply() {
        let p = parse("l_a:b/c_scale,w_4/e_negate/fl_layer_apply,g_south_east,x_1/w_50").unwrap();
        assert_eq!(p.steps.len(), 2, "{p:?}");
        assert_eq!(p.steps[0].layer_steps.len(), 2);
        assert_eq!(p.steps[0].anchor, (1.0, 1.0));
        assert_eq!(p.steps[0].x, Some(1));
        assert!(
            matches!(&p.steps[0].overlay, Some(Layer::Image { public_id, .. }) if public_id == "a/b")
        );
        assert!(parse("fl_layer_apply").is_err());
        assert!(parse("l_a:..:b").is_err());
        assert!(parse(&vec!["w_10"; MAX_COMPONENTS + 1].join("/")).is_err());
    }

    #[test]
    fn corners_borders_opacity_and_effects() {
        let run = |t: &str| {
            let plan = parse(t).unwrap();
            image::load_from_memory(&apply(&source(20, 10), &plan, "png", 1_000_000).unwrap())
                .unwrap()
                .to_rgba8()
        };
        let img = run("r_max");
        assert_eq!(img.get_pixel(0, 0).0[3], 0, "corner cut away");
        assert_eq!(img.get_pixel(10, 5).0[3], 255, "centre kept");
        let img = run("bo_2px_solid_blue");
        assert_eq!((img.width(), img.height()), (24, 14));
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 255, 255]);
        assert_eq!(img.get_pixel(2 + 7, 2 + 3).0, [7, 3, 90, 255]);
        assert_eq!(run("o_50").get_pixel(1, 1).0[3], 127);
        assert_eq!(run("e_negate").get_pixel(7, 3).0, [248, 252, 165, 255]);
        let sepia = run("e_sepia:100").get_pixel(7, 3).0;
        assert!(sepia[0] >= sepia[1] && sepia[1] >= sepia[2], "{sepia:?}");
    }

    #[test]
    fn a_render_past_its_deadline_stops() {
        let src = source(64, 64);
        let plan = parse("c_scale,w_32/e_blur:100").unwrap();
        let past = std::time::Instant::now();
        let err = with_deadline(past, || apply(&src, &plan, "png", 1 << 20)).unwrap_err();
        assert!(err.contains("deadline"), "{err}");
        // The deadline belongs to that render only.
        assert!(apply(&src, &plan, "png", 1 << 20).is_ok());
        let later = std::time::Instant::now() + std::time::Duration::from_secs(60);
        assert!(with_deadline(later, || apply(&src, &plan, "png", 1 << 20)).is_ok());
    }

    #[test]
    fn formats_quality_and_refusals() {
        let plan = parse("w_10,q_50").unwrap();
        assert_eq!(plan.quality, Some(50));
        for f in ["jpg", "png", "webp", "gif", "bmp", "tiff"] {
            let out = apply(&source(40, 20), &plan, f, 1_000_000).unwrap();
            let format = image::guess_format(&out).unwrap();
            let ext = match format.extensions_str()[0] {
                "jpeg" => "jpg",
                "tif" => "tiff",
                e => e,
            };
            assert_eq!(ext, f);
        }
        assert_eq!(output_format(&parse("f_auto").unwrap(), None, "png"), "png");
        assert_eq!(
            output_format(&parse("f_webp").unwrap(), Some("jpg"), "png"),
            "webp"
        );
        assert_eq!(output_format(&Plan::default(), Some("jpeg"), "png"), "jpg");
        assert_eq!(output_format(&Plan::default(), None, "svg"), "png");
        for bad in [
            "w_abc",
            "c_imagga_scale",
            "e_cartoonify",
            "e_blur:abc",
            "r_x",
            "o_101",
            "bo_2px_dashed_red",
            "t_named",
            "l_fetch:Zm9vYmFy",
            "q_0",
            "f_svg",
            "a_sideways",
            "w",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("fl_attachment").unwrap().attachment);
        // Any angle turns the image into its bounding box.
        assert_eq!(rotated_size(241, 51, 45.0), (206, 206));
        let turned = apply(&source(40, 20), &parse("a_30").unwrap(), "png", 1_000_000).unwrap();
        let img = image::load_from_memory(&turned).unwrap();
        assert_eq!((img.width(), img.height()), rotated_size(40, 20, 30.0));
        let err = apply(&source(100, 100), &parse("w_100").unwrap(), "png", 5_000).unwrap_err();
        assert!(err.contains("too large"), "{err}");
        let err = apply(
            &source(10, 10),
            &parse("c_scale,w_1000,h_1000").unwrap(),
            "png",
            50_000,
        )
        .unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }
}
