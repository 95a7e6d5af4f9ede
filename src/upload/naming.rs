//! Public IDs: validation and composition (folder, prefix, explicit ID, file name, random).

use crate::error::{ApiError, ApiResult};
use crate::util::random_alnum;

const MAX_PUBLIC_ID: usize = 255;
/// Characters Cloudinary forbids in public IDs and folders (plus control characters).
const FORBIDDEN: &[char] = &['?', '#', '\\', '%', '<', '>', '+'];

fn invalid(kind: &str, value: &str, why: &str) -> ApiError {
    ApiError::bad(format!("Invalid {kind} '{value}': {why}"))
}

/// Trims whitespace and slashes, collapses repeated slashes and checks every segment.
/// An empty result is allowed (the caller decides whether that is an error).
pub fn clean_path(kind: &str, raw: &str) -> ApiResult<String> {
    let trimmed = raw.trim().trim_matches('/').trim();
    if let Some(c) = trimmed
        .chars()
        .find(|c| FORBIDDEN.contains(c) || c.is_control())
    {
        let shown = if c.is_control() {
            format!("control character U+{:04X}", c as u32)
        } else {
            format!("'{c}'")
        };
        return Err(invalid(
            kind,
            raw,
            &format!("it contains the forbidden character {shown}"),
        ));
    }
    let mut cleaned = String::with_capacity(trimmed.len());
    for seg in trimmed.split('/').map(str::trim).filter(|s| !s.is_empty()) {
        if seg == "." || seg == ".." {
            return Err(invalid(
                kind,
                raw,
                "'.' and '..' are not allowed as path segments",
            ));
        }
        if !cleaned.is_empty() {
            cleaned.push('/');
        }
        cleaned.push_str(seg);
    }
    if cleaned.chars().count() > MAX_PUBLIC_ID {
        return Err(invalid(kind, raw, "it is longer than 255 characters"));
    }
    Ok(cleaned)
}

/// Folder segments must not look like a version component (`v` followed by digits).
fn check_no_version_folders(public_id: &str) -> ApiResult<()> {
    let folders = public_id
        .rsplit_once('/')
        .map_or("", |(folders, _)| folders);
    for s in folders.split('/') {
        if s.len() > 1 && s.starts_with('v') && s[1..].chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid(
                "public_id",
                public_id,
                &format!("the folder '{s}' looks like a version (v followed by digits)"),
            ));
        }
    }
    Ok(())
}

/// The base name of an uploaded file's name (clients may send a path) split into stem and
/// extension (without the dot, lower-cased).
pub fn split_filename(filename: &str) -> (String, Option<String>) {
    let base = filename
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(filename)
        .trim();
    match base.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() && !ext.contains(' ') => {
            (stem.to_string(), Some(ext.to_ascii_lowercase()))
        }
        _ => (base.to_string(), None),
    }
}

/// A file name stem made safe for a public ID: letters and digits of any script, `-`, `_` and
/// `.` are kept, everything else becomes `_`.
pub fn normalize_stem(stem: &str) -> String {
    let s: String = stem
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_matches('.').to_string();
    if s.is_empty() {
        "file".to_string()
    } else {
        s
    }
}

/// A split file name as [`NameParts`] takes it.
pub fn borrowed(split: &(String, Option<String>)) -> (&str, Option<&str>) {
    (split.0.as_str(), split.1.as_deref())
}

/// The inputs of [`compose`].
#[derive(Debug, Default)]
pub struct NameParts<'a> {
    pub public_id: Option<&'a str>,
    pub folder: Option<&'a str>,
    pub public_id_prefix: Option<&'a str>,
    pub use_filename: bool,
    pub unique_filename: bool,
    /// Stem and extension of the original file name, when there is one.
    pub filename: Option<(&'a str, Option<&'a str>)>,
    /// Raw assets keep the extension in the public ID.
    pub raw: bool,
}

/// `[folder/][prefix/]base[.ext]` where base is the explicit ID, the file name (with a random
/// suffix when unique) or 20 random characters.
pub fn compose(parts: &NameParts) -> ApiResult<String> {
    let folder = clean_path("folder", parts.folder.unwrap_or(""))?;
    let prefix = clean_path("public_id_prefix", parts.public_id_prefix.unwrap_or(""))?;
    let explicit = match parts.public_id {
        Some(p) => {
            let cleaned = clean_path("public_id", p)?;
            (!cleaned.is_empty()).then_some(cleaned)
        }
        None => None,
    };
    let ext = parts.filename.and_then(|(_, e)| e).filter(|_| parts.raw);
    let base = match explicit {
        Some(id) => {
            if !folder.is_empty() && id.starts_with(&format!("{folder}/")) {
                // The caller already put the folder in the ID.
                return finish(id);
            }
            id
        }
        None => {
            let stem = match (parts.filename, parts.use_filename) {
                (Some((stem, _)), true) => {
                    let stem = normalize_stem(stem);
                    if parts.unique_filename {
                        format!("{stem}_{}", random_alnum(6))
                    } else {
                        stem
                    }
                }
                _ => crate::util::new_public_id(),
            };
            match ext {
                Some(e) => format!("{stem}.{e}"),
                None => stem,
            }
        }
    };
    let joined = if folder.is_empty() && prefix.is_empty() {
        base
    } else {
        let mut joined = String::with_capacity(folder.len() + prefix.len() + base.len() + 2);
        for piece in [folder.as_str(), prefix.as_str(), base.as_str()] {
            if !piece.is_empty() {
                if !joined.is_empty() {
                    joined.push('/');
                }
                joined.push_str(piece);
            }
        }
        joined
    };
    finish(clean_path("public_id", &joined)?)
}

fn finish(id: String) -> ApiResult<String> {
    if id.is_empty() {
        return Err(ApiError::bad("Invalid public_id '': it is empty"));
    }
    check_no_version_folders(&id)?;
    if id.chars().count() > MAX_PUBLIC_ID {
        return Err(invalid(
            "public_id",
            &id,
            "it is longer than 255 characters",
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_ids_are_trimmed_and_checked() {
        let id = |p: &str| {
            compose(&NameParts {
                public_id: Some(p),
                ..Default::default()
            })
        };
        assert_eq!(id(" /a//b/ ").unwrap(), "a/b");
        assert_eq!(id("a&b").unwrap(), "a&b");
        assert_eq!(id("café/ünï").unwrap(), "café/ünï");
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "a\\b",
            "a%2e",
            "a\0b",
            "x?y",
            "v12/x",
        ] {
            assert!(id(bad).is_err(), "{bad}");
        }
        assert!(id(&"x".repeat(256)).is_err());
    }

    #[test]
    fn folder_prefix_filename_and_random() {
        let n = compose(&NameParts {
            public_id: Some("f/x"),
            folder: Some("f"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(n, "f/x");
        let n = compose(&NameParts {
            public_id: Some("x"),
            folder: Some("/f/g/"),
            public_id_prefix: Some("p"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(n, "f/g/p/x");
        let n = compose(&NameParts {
            use_filename: true,
            unique_filename: true,
            filename: Some(("my logo", Some("png"))),
            ..Default::default()
        })
        .unwrap();
        assert!(
            n.starts_with("my_logo_") && n.len() == "my_logo_".len() + 6,
            "{n}"
        );
        let n = compose(&NameParts {
            raw: true,
            filename: Some(("report", Some("pdf"))),
            ..Default::default()
        })
        .unwrap();
        assert!(n.ends_with(".pdf") && n.len() == 24, "{n}");
        let n = compose(&NameParts::default()).unwrap();
        assert!(
            n.len() == 20
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }
}
