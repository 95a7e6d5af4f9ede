//! Text rendered to an image: the `l_text:` overlays and the `text` method. Every font family
//! is drawn with Liberation Sans (metric-compatible with Arial, bundled with nephos, see
//! `assets/fonts/LICENSE`), regular or bold.

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::{Rgba, RgbaImage};

static REGULAR: &[u8] = include_bytes!("../../assets/fonts/LiberationSans-Regular.ttf");
static BOLD: &[u8] = include_bytes!("../../assets/fonts/LiberationSans-Bold.ttf");

/// Characters of text rendered at most.
pub const MAX_CHARS: usize = 2000;
/// Font sizes accepted, in pixels.
pub const MAX_SIZE: f32 = 1000.0;

/// How text is drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct TextStyle {
    pub size: f32,
    pub bold: bool,
    pub color: Rgba<u8>,
    /// Filled behind the text; transparent when `None`.
    pub background: Option<Rgba<u8>>,
    /// Extra pixels between lines.
    pub line_spacing: f32,
    /// `left`, `center` or `right`.
    pub align: Align,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Center,
    Right,
}

impl Default for TextStyle {
    fn default() -> Self {
        TextStyle {
            size: 12.0,
            bold: false,
            color: Rgba([0, 0, 0, 255]),
            background: None,
            line_spacing: 0.0,
            align: Align::Left,
        }
    }
}

/// Renders `text` (lines split on `\n`) into an image just large enough for it; the result
/// has at most `max_pixels` pixels.
pub fn render(text: &str, style: &TextStyle, max_pixels: u64) -> Result<RgbaImage, String> {
    if text.chars().count() > MAX_CHARS {
        return Err(format!("Text is too long (at most {MAX_CHARS} characters)"));
    }
    if !(style.size.is_finite() && style.size > 0.0 && style.size <= MAX_SIZE) {
        return Err(format!("Font size must be between 1 and {MAX_SIZE}"));
    }
    let font = FontRef::try_from_slice(if style.bold { BOLD } else { REGULAR })
        .map_err(|e| format!("Font unavailable: {e}"))?;
    let scaled = font.as_scaled(PxScale::from(style.size));
    let line_height = scaled.height() + scaled.line_gap() + style.line_spacing.max(0.0);
    let lines: Vec<&str> = text.split('\n').collect();
    let widths: Vec<f32> = lines
        .iter()
        .map(|line| {
            let mut w = 0.0;
            let mut prev = None;
            for c in line.chars() {
                let id = scaled.glyph_id(c);
                // Characters the font lacks (emoji, …) are left out, not drawn as boxes.
                if id.0 == 0 {
                    continue;
                }
                if let Some(p) = prev {
                    w += scaled.kern(p, id);
                }
                w += scaled.h_advance(id);
                prev = Some(id);
            }
            w
        })
        .collect();
    let width = widths
        .iter()
        .cloned()
        .fold(0.0f32, f32::max)
        .ceil()
        .max(1.0) as u32;
    let height = (line_height * lines.len() as f32).ceil().max(1.0) as u32;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(format!(
            "The text image would be too large ({width}x{height})"
        ));
    }
    let mut img = RgbaImage::from_pixel(
        width,
        height,
        style.background.unwrap_or(Rgba([0, 0, 0, 0])),
    );
    for (i, (line, w)) in lines.iter().zip(&widths).enumerate() {
        let mut x = match style.align {
            Align::Left => 0.0,
            Align::Center => (width as f32 - w) / 2.0,
            Align::Right => width as f32 - w,
        };
        let baseline = i as f32 * line_height + scaled.ascent();
        let mut prev = None;
        for c in line.chars() {
            let id = scaled.glyph_id(c);
            if id.0 == 0 {
                continue;
            }
            if let Some(p) = prev {
                x += scaled.kern(p, id);
            }
            let glyph = id.with_scale_and_position(PxScale::from(style.size), point(x, baseline));
            x += scaled.h_advance(id);
            prev = Some(id);
            let Some(outlined) = font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outlined.px_bounds();
            outlined.draw(|gx, gy, coverage| {
                let px = bounds.min.x as i64 + i64::from(gx);
                let py = bounds.min.y as i64 + i64::from(gy);
                if px < 0 || py < 0 || px >= i64::from(width) || py >= i64::from(height) {
                    return;
                }
                let dst = img.get_pixel_mut(px as u32, py as u32);
                *dst = blend(*dst, style.color, coverage);
            });
        }
    }
    Ok(img)
}

/// `src` over `dst` with `coverage` (0–1) of `src`'s alpha.
fn blend(dst: Rgba<u8>, src: Rgba<u8>, coverage: f32) -> Rgba<u8> {
    let sa = f32::from(src[3]) / 255.0 * coverage.clamp(0.0, 1.0);
    let da = f32::from(dst[3]) / 255.0;
    let oa = sa + da * (1.0 - sa);
    if oa <= 0.0 {
        return Rgba([0, 0, 0, 0]);
    }
    let ch = |s: u8, d: u8| {
        ((f32::from(s) * sa + f32::from(d) * da * (1.0 - sa)) / oa)
            .round()
            .clamp(0.0, 255.0) as u8
    };
    Rgba([
        ch(src[0], dst[0]),
        ch(src[1], dst[1]),
        ch(src[2], dst[2]),
        (oa * 255.0).round() as u8,
    ])
}

/// Parses the style part of `l_text:<family>_<size>[_<style>…]:<text>`: the family (any
/// name: drawn with the bundled font), the size, then `bold`, `italic`, `normal`, alignment
/// and `line_spacing_<n>` words.
pub fn parse_style(spec: &str) -> Result<TextStyle, String> {
    let mut parts = spec.split('_');
    let family = parts.next().unwrap_or("");
    if family.is_empty() {
        return Err("a font family is required".into());
    }
    let size: f32 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("a font size is required")?;
    let mut style = TextStyle {
        size,
        ..TextStyle::default()
    };
    let rest: Vec<&str> = parts.collect();
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            "bold" | "semibold" | "extrabold" | "black" => style.bold = true,
            "normal" | "italic" | "oblique" | "light" | "thin" | "underline" | "strikethrough"
            | "antialias" | "none" | "hinting" | "full" | "good" | "best" | "fast" | "gray"
            | "subpixel" | "slight" | "medium" | "stroke" => {}
            "left" => style.align = Align::Left,
            "center" => style.align = Align::Center,
            "right" | "end" | "start" | "justify" => {
                style.align = if rest[i] == "right" || rest[i] == "end" {
                    Align::Right
                } else {
                    Align::Left
                }
            }
            "line" if rest.get(i + 1) == Some(&"spacing") => {
                style.line_spacing = rest
                    .get(i + 2)
                    .and_then(|v| v.parse().ok())
                    .ok_or("line_spacing needs a number")?;
                i += 2;
            }
            "letter" if rest.get(i + 1) == Some(&"spacing") => i += 2,
            other => return Err(format!("unsupported text style {other}")),
        }
        i += 1;
    }
    Ok(style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_with_ink() {
        let img = render("hello world", &TextStyle::default(), 1_000_000).unwrap();
        assert!((50..=70).contains(&img.width()), "width {}", img.width());
        assert!((10..=16).contains(&img.height()), "height {}", img.height());
        let inked = img.pixels().filter(|p| p[3] > 128).count();
        assert!(inked > 50, "only {inked} inked pixels");
        let two = render("a\nb", &TextStyle::default(), 1_000_000).unwrap();
        assert!(two.height() > img.height());
    }

    #[test]
    fn characters_the_font_lacks_are_left_out() {
        let plain = render("hi there", &TextStyle::default(), 1_000_000).unwrap();
        let with_emoji = render("hi \u{1F600}there", &TextStyle::default(), 1_000_000).unwrap();
        assert_eq!(plain.dimensions(), with_emoji.dimensions());
        assert_eq!(plain.as_raw(), with_emoji.as_raw());
    }

    #[test]
    fn limits_are_enforced() {
        let big = TextStyle {
            size: 900.0,
            ..TextStyle::default()
        };
        assert!(render("wide text here", &big, 1_000_000).is_err());
        assert!(render(&"x".repeat(MAX_CHARS + 1), &TextStyle::default(), u64::MAX).is_err());
        let bad = TextStyle {
            size: f32::NAN,
            ..TextStyle::default()
        };
        assert!(render("x", &bad, 1_000_000).is_err());
    }

    #[test]
    fn styles_parse() {
        let s = parse_style("arial_20_bold_center").unwrap();
        assert_eq!((s.size, s.bold, s.align), (20.0, true, Align::Center));
        assert!(parse_style("arial").is_err());
        assert!(parse_style("arial_20_sparkly").is_err());
        let s = parse_style("Roboto_14_line_spacing_5").unwrap();
        assert_eq!(s.line_spacing, 5.0);
    }
}
