//! Golden images: each transformation of a fixed source, compared with a reference rendered
//! once and committed (`tests/golden/*.png`), within a tolerance. `NEPHOS_UPDATE_GOLDEN=1`
//! writes the references again (after a deliberate change; look at them before committing).

use std::path::PathBuf;
use std::sync::Arc;

use image::{DynamicImage, Rgba, RgbaImage};
use nephos::media::transform;

/// A source with gradients, hard edges and transparency in one corner.
fn source() -> Vec<u8> {
    let img = RgbaImage::from_fn(160, 100, |x, y| {
        let in_box = (40..80).contains(&x) && (30..60).contains(&y);
        let in_disc = (x as i32 - 120).pow(2) + (y as i32 - 50).pow(2) < 400;
        if in_box {
            Rgba([250, 250, 250, 255])
        } else if in_disc {
            Rgba([20, 40, 200, 255])
        } else if x < 10 && y < 10 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([(x * 255 / 159) as u8, (y * 255 / 99) as u8, 120, 255])
        }
    });
    png(&DynamicImage::ImageRgba8(img))
}

/// A small mark used as an image layer.
fn mark() -> Vec<u8> {
    let img = RgbaImage::from_fn(24, 24, |x, y| {
        if (x / 6 + y / 6) % 2 == 0 {
            Rgba([230, 30, 30, 255])
        } else {
            Rgba([255, 220, 0, 200])
        }
    });
    png(&DynamicImage::ImageRgba8(img))
}

fn png(img: &DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

const CASES: &[(&str, &str)] = &[
    ("scale_w80", "c_scale,w_80"),
    ("fill_60x60_north_east", "c_fill,g_north_east,h_60,w_60"),
    ("fit_50x50", "c_fit,h_50,w_50"),
    ("pad_120x120_red", "b_red,c_pad,h_120,w_120"),
    ("crop_xy", "c_crop,h_40,w_50,x_30,y_20"),
    ("thumb_faces_40", "c_thumb,g_faces,h_40,w_40"),
    ("rotate_30", "a_30"),
    ("rotate_90_hflip", "a_90/a_hflip"),
    ("radius_max", "r_max"),
    ("radius_12_border", "bo_3px_solid_black,r_12"),
    ("opacity_50", "o_50"),
    ("grayscale", "e_grayscale"),
    ("sepia", "e_sepia"),
    ("negate", "e_negate"),
    ("blur_300", "e_blur:300"),
    ("sharpen_400", "e_sharpen:400"),
    ("blackwhite", "e_blackwhite"),
    ("brightness_40", "e_brightness:40"),
    ("contrast_60", "e_contrast:60"),
    ("saturation_-80", "e_saturation:-80"),
    ("gamma_50", "e_gamma:50"),
    ("pixelate_8", "e_pixelate:8"),
    ("colorize_40_green", "co_green,e_colorize:40"),
    ("vignette_60", "e_vignette:60"),
    ("auto_contrast", "e_auto_contrast"),
    ("trim_after_pad", "b_white,c_pad,h_140,w_200/e_trim"),
    (
        "text_layer",
        "l_text:Arial_18_bold:Hello%2C%20nephos,co_white,g_south,y_6",
    ),
    (
        "image_layer",
        "l_mark/c_scale,w_30/fl_layer_apply,g_north_west,x_5,y_5",
    ),
    ("image_underlay", "u_mark,c_scale,w_160,h_100"),
    (
        "chained",
        "c_fill,h_80,w_80/e_grayscale/r_20/bo_2px_solid_rgb:ff8800",
    ),
    ("shadow", "c_scale,w_80/co_rgb:202060,e_shadow:60,x_8,y_6"),
    ("outline", "r_max/co_black,e_outline:4"),
    ("replace_color", "e_replace_color:orange:30:fafafa"),
    (
        "text_on_background",
        "l_text:Arial_16:Sale,co_white,b_rgb:aa0000,g_north_west,x_4,y_4",
    ),
    // Written as WebP (cases named `webp_…`), decoded for the comparison.
    ("webp_lossy_q40", "c_scale,w_120,q_40"),
    ("webp_fl_lossy", "c_fill,h_60,w_60/fl_lossy"),
];

fn reference(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.png"))
}

fn render(name: &str, t: &str) -> DynamicImage {
    let mut plan = transform::parse(t).unwrap_or_else(|e| panic!("{t}: {e}"));
    let mark = Arc::new(mark());
    for (_, data) in plan.image_layers_mut() {
        *data = Some(mark.clone());
    }
    let format = if name.starts_with("webp_") {
        "webp"
    } else {
        "png"
    };
    let out = transform::apply(&source(), &plan, format, 10_000_000)
        .unwrap_or_else(|e| panic!("{t}: {e}"));
    if format == "webp" {
        // A lossy WebP: libwebp's VP8 bitstream (with alpha beside it), not VP8L.
        assert!(transform::is_lossy_source(&out), "{name}: not lossy");
    }
    image::load_from_memory(&out).unwrap()
}

/// (mean, max) absolute difference per channel of what shows: colours weighted by their
/// alpha (the colour of a transparent pixel does not count), and alpha.
fn difference(a: &RgbaImage, b: &RgbaImage) -> (f64, u8) {
    let shown = |p: &Rgba<u8>, c: usize| -> u8 {
        if c == 3 {
            p[3]
        } else {
            ((u16::from(p[c]) * u16::from(p[3]) + 127) / 255) as u8
        }
    };
    let mut sum = 0u64;
    let mut max = 0u8;
    for (p, q) in a.pixels().zip(b.pixels()) {
        for c in 0..4 {
            let d = shown(p, c).abs_diff(shown(q, c));
            sum += u64::from(d);
            max = max.max(d);
        }
    }
    (sum as f64 / (a.len() as f64), max)
}

#[test]
fn transformations_match_their_golden_images() {
    let update = std::env::var("NEPHOS_UPDATE_GOLDEN").as_deref() == Ok("1");
    let mut failures = Vec::new();
    for (name, t) in CASES {
        let got = render(name, t).to_rgba8();
        let path = reference(name);
        if update {
            got.save(&path).unwrap();
            continue;
        }
        let want = match image::open(&path) {
            Ok(i) => i.to_rgba8(),
            Err(e) => {
                failures.push(format!(
                    "{name} ({t}): no reference {}: {e}",
                    path.display()
                ));
                continue;
            }
        };
        if got.dimensions() != want.dimensions() {
            failures.push(format!(
                "{name} ({t}): {:?}, reference {:?}",
                got.dimensions(),
                want.dimensions()
            ));
            continue;
        }
        let (mean, max) = difference(&got, &want);
        // Same code, same pixels; the tolerance absorbs floating-point differences between
        // machines (filters, rotation), not different renderings.
        if mean > 0.5 || max > 24 {
            failures.push(format!(
                "{name} ({t}): mean difference {mean:.3}, max {max}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn golden_references_show_what_they_name() {
    // A few properties checked on the references themselves, so that a wrong reference
    // cannot be committed unnoticed.
    let open = |n: &str| image::open(reference(n)).unwrap().to_rgba8();
    assert_eq!(open("scale_w80").dimensions(), (80, 50));
    assert_eq!(open("pad_120x120_red").get_pixel(2, 2).0, [255, 0, 0, 255]);
    let bw = open("blackwhite");
    assert!(bw
        .pixels()
        .all(|p| p[0] == p[1] && p[1] == p[2] && (p[0] == 0 || p[0] == 255)));
    assert_eq!(open("radius_max").get_pixel(0, 0).0[3], 0);
    let layer = open("image_layer");
    assert_eq!(layer.get_pixel(6, 6).0, [230, 30, 30, 255]);
    // Padded to 200×140 (the image scaled to 200×125), the white rows trimmed away.
    assert_eq!(open("trim_after_pad").dimensions(), (200, 125));
    let boxed = open("text_on_background");
    assert_eq!(
        boxed.get_pixel(5, 5).0,
        [170, 0, 0, 255],
        "the text layer's background"
    );
    // Lossy: close to the lossless rendering, not equal to it, transparency kept.
    let lossy = open("webp_lossy_q40");
    assert_eq!(lossy.dimensions(), (120, 75));
    let (mean, _) = difference(&lossy, &render("scaled", "c_scale,w_120").to_rgba8());
    assert!(mean > 0.0 && mean < 4.0, "{mean}");
    assert_eq!(lossy.get_pixel(1, 1).0[3], 0);
    let negate = open("negate");
    assert_eq!(negate.get_pixel(60, 45).0, [5, 5, 5, 255]);
}
