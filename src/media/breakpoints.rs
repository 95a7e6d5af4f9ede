//! Responsive breakpoints: the widths worth delivering an image at, from the largest (its
//! width, at most `max_width`) down to `min_width`, a new width each time the file would shrink
//! by `bytes_step` (estimated from the size of the largest, as file size follows the pixel
//! count), at most `max_images` of them.

/// How breakpoints are chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub min_width: u32,
    pub max_width: u32,
    pub bytes_step: u64,
    pub max_images: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            min_width: 50,
            max_width: 1000,
            bytes_step: 20_000,
            max_images: 20,
        }
    }
}

/// Widths the settings accept at most (Cloudinary's own bound).
const MAX_WIDTH: u32 = 10_000;

impl Settings {
    /// Checks the bounds (a clear message for each).
    pub fn check(&self) -> Result<(), String> {
        if self.min_width == 0 || self.max_width > MAX_WIDTH || self.min_width > self.max_width {
            return Err(format!(
                "breakpoint widths must satisfy 0 < min_width <= max_width <= {MAX_WIDTH}"
            ));
        }
        if self.bytes_step == 0 {
            return Err("bytes_step must be positive".into());
        }
        if !(1..=100).contains(&self.max_images) {
            return Err("max_images must be from 1 to 100".into());
        }
        Ok(())
    }
}

/// The `w_auto:breakpoints[_<min>_<max>_<step KB>_<max images>][:json]` value (after `w_`):
/// the settings and whether the breakpoints are asked for as JSON.
pub fn parse_auto(value: &str) -> Result<(Settings, bool), String> {
    let mut parts = value.split(':');
    if parts.next() != Some("auto") {
        return Err("expected auto".into());
    }
    let mut settings = Settings::default();
    let mut json = false;
    for part in parts {
        if part == "json" {
            json = true;
        } else if let Some(rest) = part.strip_prefix("breakpoints") {
            let nums: Vec<&str> = rest.split('_').filter(|s| !s.is_empty()).collect();
            if !nums.is_empty() {
                let n: Vec<u64> = nums
                    .iter()
                    .map(|s| s.parse::<u64>().map_err(|_| format!("invalid number {s}")))
                    .collect::<Result<_, _>>()?;
                if n.len() != 4 {
                    return Err("breakpoints take min_max_step_images".into());
                }
                settings = Settings {
                    min_width: u32::try_from(n[0]).map_err(|_| "min width too large")?,
                    max_width: u32::try_from(n[1]).map_err(|_| "max width too large")?,
                    bytes_step: n[2].saturating_mul(1000),
                    max_images: usize::try_from(n[3]).map_err(|_| "too many images")?,
                };
            }
        } else if part.parse::<u32>().is_err() {
            return Err(format!("unsupported auto width option {part}"));
        }
    }
    settings.check()?;
    Ok((settings, json))
}

/// The breakpoints of an image `width` pixels wide whose file has `bytes` bytes, largest
/// first.
pub fn widths(width: u32, bytes: u64, s: &Settings) -> Vec<u32> {
    let top = width.min(s.max_width).max(1);
    let mut out = vec![top];
    if top <= s.min_width {
        return out;
    }
    let size_at = |w: u32| {
        let k = f64::from(w) / f64::from(width.max(1));
        bytes as f64 * k * k
    };
    let mut last = size_at(top);
    let step = s.bytes_step as f64;
    let mut w = top;
    while w > s.min_width + 1 {
        w -= 1;
        let here = size_at(w);
        if last - here >= step && size_at(w) - size_at(s.min_width) >= step {
            out.push(w);
            last = here;
        }
    }
    out.push(s.min_width);
    if out.len() > s.max_images {
        // Keep the largest, the smallest and evenly spread ones between.
        let n = s.max_images;
        if n == 1 {
            return vec![top];
        }
        let picked: Vec<u32> = (0..n).map(|i| out[i * (out.len() - 1) / (n - 1)]).collect();
        out = picked;
        out.dedup();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_get_the_two_ends() {
        assert_eq!(widths(206, 3_000, &Settings::default()), vec![206, 50]);
        assert_eq!(widths(40, 3_000, &Settings::default()), vec![40]);
        assert_eq!(widths(5000, 3_000, &Settings::default()), vec![1000, 50]);
    }

    #[test]
    fn large_files_get_steps_within_bounds() {
        let s = Settings::default();
        let w = widths(1000, 1_000_000, &s);
        assert_eq!(w.first(), Some(&1000));
        assert_eq!(w.last(), Some(&50));
        assert!(w.len() > 2 && w.len() <= s.max_images, "{w:?}");
        assert!(w.windows(2).all(|p| p[0] > p[1]), "{w:?}");
    }

    #[test]
    fn url_settings_parse() {
        let (s, json) = parse_auto("auto:breakpoints_50_1000_20_20:json").unwrap();
        assert!(json);
        assert_eq!(s.bytes_step, 20_000);
        assert!(parse_auto("auto:breakpoints:json").is_ok());
        assert!(parse_auto("auto:breakpoints_0_10_1_1").is_err());
        assert!(parse_auto("auto:breakpoints_1_2").is_err());
        assert!(parse_auto("auto:sparkle").is_err());
    }
}
