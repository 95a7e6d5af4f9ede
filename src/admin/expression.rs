//! The Search API's expression language, a Lucene-like query over asset fields:
//! `tags:shoe AND (format:jpg OR format=png) AND bytes>1mb AND -folder:tmp/* AND created_at>1d`.
//!
//! Terms are `value` (any text field) or `field OP value` with `:` (case-insensitive; a
//! trailing `*` matches a prefix), `=` (exact), `<`, `<=`, `>`, `>=`, or a range
//! `field:[low TO high]` (`{…}` for exclusive bounds). Terms combine with `AND` (also the
//! default between adjacent terms), `OR`, `NOT` / `-` and parentheses; values may be quoted.
//! Sizes take `k`/`m`/`g` or `kb`/`mb`/`gb` (1024-based) and times take ISO dates or a relative age
//! (`1h`, `2d`, `3w`, `1m` for months, `1y`).

use serde_json::Value as Json;

use crate::db::AssetRecord;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Term(Term),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// `None` searches the text fields.
    pub field: Option<String>,
    pub op: Op,
    pub value: String,
    /// The value ended with an unquoted `*`: a prefix.
    pub prefix: bool,
    /// For ranges: the upper bound; `value` is the lower one. `*` is an open bound.
    pub high: Option<String>,
    pub inclusive: (bool, bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Match,
    Exact,
    Lt,
    Le,
    Gt,
    Ge,
    Range,
}

/// Parses an expression; the message of an error says where it went wrong.
pub fn parse(input: &str) -> Result<Expr, String> {
    if input.chars().count() > MAX_LEN {
        return Err(format!(
            "the expression is too long (at most {MAX_LEN} characters)"
        ));
    }
    let mut p = Parser {
        chars: input.chars().collect(),
        pos: 0,
        depth: 0,
    };
    let e = p.or_expr()?;
    p.skip_ws();
    if p.pos < p.chars.len() {
        return Err(format!(
            "unexpected '{}' at position {}",
            p.chars[p.pos],
            p.pos + 1
        ));
    }
    Ok(e)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    /// Nesting of parentheses and negations so far (bounded: the parser recurses).
    depth: usize,
}

/// Characters of an expression at most.
const MAX_LEN: usize = 10_000;
/// Nesting (parentheses, `NOT`, `-`) at most.
const MAX_DEPTH: usize = 64;

const SPECIAL: &[char] = &['(', ')', '[', ']', '{', '}', ':', '=', '<', '>', '"'];

impl Parser {
    fn skip_ws(&mut self) {
        while self.pos < self.chars.len() && self.chars[self.pos].is_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// The keyword at the cursor (`AND`, `OR`, `NOT`, `&&`, `||`) followed by a boundary.
    fn keyword(&mut self, words: &[&str]) -> bool {
        self.skip_ws();
        for w in words {
            let wc: Vec<char> = w.chars().collect();
            let end = self.pos + wc.len();
            if end <= self.chars.len() && self.chars[self.pos..end] == wc[..] {
                let boundary = match self.chars.get(end) {
                    None => true,
                    Some(c) => {
                        c.is_whitespace() || *c == '(' || !w.chars().all(char::is_alphabetic)
                    }
                };
                if boundary {
                    self.pos = end;
                    return true;
                }
            }
        }
        false
    }

    fn or_expr(&mut self) -> Result<Expr, String> {
        let mut parts = vec![self.and_expr()?];
        while self.keyword(&["OR", "||"]) {
            parts.push(self.and_expr()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Or(parts)
        })
    }

    fn and_expr(&mut self) -> Result<Expr, String> {
        let mut parts = vec![self.unary()?];
        loop {
            if self.keyword(&["AND", "&&"]) {
                parts.push(self.unary()?);
                continue;
            }
            self.skip_ws();
            match self.peek() {
                None | Some(')') => break,
                _ => {}
            }
            // `OR` ends this conjunction; anything else is an implicit AND.
            let save = self.pos;
            if self.keyword(&["OR", "||"]) {
                self.pos = save;
                break;
            }
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "the expression is nested too deeply (at most {MAX_DEPTH})"
            ));
        }
        let e = self.unary_inner();
        self.depth -= 1;
        e
    }

    fn unary_inner(&mut self) -> Result<Expr, String> {
        self.skip_ws();
        if self.keyword(&["NOT"]) {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        match self.peek() {
            Some('-') | Some('!') => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some('+') => {
                self.pos += 1;
                self.unary()
            }
            Some('(') => {
                self.pos += 1;
                let e = self.or_expr()?;
                self.skip_ws();
                if self.peek() != Some(')') {
                    return Err("missing ')'".into());
                }
                self.pos += 1;
                Ok(e)
            }
            None => Err("expected a term at the end of the expression".into()),
            _ => {
                let save = self.pos;
                if self.keyword(&["AND", "OR", "&&", "||"]) {
                    self.pos = save;
                    return Err(format!("unexpected operator at position {}", save + 1));
                }
                self.term()
            }
        }
    }

    /// A bare word (up to whitespace, a special character or `)`), with `\` escapes.
    fn word(&mut self) -> (String, bool) {
        let mut out = String::new();
        let mut prefix = false;
        while let Some(c) = self.peek() {
            if c.is_whitespace() || SPECIAL.contains(&c) {
                break;
            }
            self.pos += 1;
            if c == '\\' {
                if let Some(n) = self.peek() {
                    out.push(n);
                    self.pos += 1;
                }
                continue;
            }
            if c == '*'
                && (self
                    .peek()
                    .is_none_or(|n| n.is_whitespace() || SPECIAL.contains(&n)))
            {
                prefix = true;
                break;
            }
            out.push(c);
        }
        (out, prefix)
    }

    fn quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err("unterminated quoted value".into()),
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    self.pos += 1;
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.pos += 1;
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// A value: quoted, or a bare word (possibly a prefix).
    fn value(&mut self) -> Result<(String, bool), String> {
        self.skip_ws();
        if self.peek() == Some('"') {
            return Ok((self.quoted()?, false));
        }
        let (w, prefix) = self.word();
        if w.is_empty() && !prefix {
            return Err(format!("expected a value at position {}", self.pos + 1));
        }
        Ok((w, prefix))
    }

    fn term(&mut self) -> Result<Expr, String> {
        let (first, prefix) = self.value()?;
        let field_op = match (self.peek(), self.chars.get(self.pos + 1).copied()) {
            (Some(':'), Some('>')) | (Some('>'), _) => Some(self.cmp_op('>', Op::Gt, Op::Ge)),
            (Some(':'), Some('<')) | (Some('<'), _) => Some(self.cmp_op('<', Op::Lt, Op::Le)),
            (Some(':'), _) => {
                self.pos += 1;
                Some(Op::Match)
            }
            (Some('='), _) => {
                self.pos += 1;
                Some(Op::Exact)
            }
            _ => None,
        };
        let Some(mut op) = field_op else {
            return Ok(Expr::Term(Term {
                field: None,
                op: Op::Match,
                value: first,
                prefix,
                high: None,
                inclusive: (true, true),
            }));
        };
        if prefix || first.is_empty() {
            return Err(format!("invalid field name '{first}'"));
        }
        self.skip_ws();
        if op == Op::Match && matches!(self.peek(), Some('[') | Some('{')) {
            let low_incl = self.peek() == Some('[');
            self.pos += 1;
            let (low, low_star) = self.value()?;
            if !self.keyword(&["TO"]) {
                return Err("expected TO in a range".into());
            }
            let (high, high_star) = self.value()?;
            self.skip_ws();
            let high_incl = match self.peek() {
                Some(']') => true,
                Some('}') => false,
                _ => return Err("expected ']' or '}' to close a range".into()),
            };
            self.pos += 1;
            op = Op::Range;
            return Ok(Expr::Term(Term {
                field: Some(first.to_ascii_lowercase()),
                op,
                value: if low_star && low.is_empty() {
                    "*".into()
                } else {
                    low
                },
                prefix: false,
                high: Some(if high_star && high.is_empty() {
                    "*".into()
                } else {
                    high
                }),
                inclusive: (low_incl, high_incl),
            }));
        }
        let (value, prefix) = self.value()?;
        Ok(Expr::Term(Term {
            field: Some(first.to_ascii_lowercase()),
            op,
            value,
            prefix,
            high: None,
            inclusive: (true, true),
        }))
    }

    /// `>`, `>=`, `:>`, `:>=` (and the same with `<`).
    fn cmp_op(&mut self, sign: char, strict: Op, or_equal: Op) -> Op {
        if self.peek() == Some(':') {
            self.pos += 1;
        }
        if self.peek() == Some(sign) {
            self.pos += 1;
        }
        if self.peek() == Some('=') {
            self.pos += 1;
            or_equal
        } else {
            strict
        }
    }
}

/// What a field holds for one document.
pub enum Field {
    Text(Vec<String>),
    Number(Option<f64>),
    Time(i64),
}

/// Something an expression can be matched against.
pub trait Searchable {
    /// The value of a field; `None` for a field this kind of document does not have.
    fn field(&self, name: &str) -> Option<Field>;
    /// The fields a term without a field name searches.
    fn text_fields(&self) -> &'static [&'static str];
}

impl Searchable for AssetRecord {
    fn field(&self, name: &str) -> Option<Field> {
        asset_field(self, name)
    }

    fn text_fields(&self) -> &'static [&'static str] {
        TEXT_FIELDS
    }
}

/// A folder, as folder search sees it.
pub struct FolderDoc<'a> {
    pub path: &'a str,
    pub external_id: &'a str,
}

impl Searchable for FolderDoc<'_> {
    fn field(&self, name: &str) -> Option<Field> {
        let text = |s: &str| Some(Field::Text(vec![s.to_string()]));
        match name {
            "path" => text(self.path),
            "name" => text(self.path.rsplit('/').next().unwrap_or(self.path)),
            "id" | "external_id" => text(self.external_id),
            _ => None,
        }
    }

    fn text_fields(&self) -> &'static [&'static str] {
        &["name", "path"]
    }
}

fn asset_field(rec: &AssetRecord, name: &str) -> Option<Field> {
    let text = |s: &str| Some(Field::Text(vec![s.to_string()]));
    let num = |n: Option<f64>| Some(Field::Number(n));
    match name {
        "public_id" => text(&rec.key.public_id),
        "asset_id" => text(&rec.asset_id),
        "filename" => text(&filename(rec)),
        "display_name" => text(&rec.display_name),
        "folder" | "asset_folder" => text(&rec.asset_folder),
        "resource_type" => text(&rec.key.resource_type),
        "type" => text(&rec.key.delivery_type),
        "format" => text(rec.format.as_deref().unwrap_or("")),
        "etag" => text(&rec.etag),
        "status" => text("active"),
        "access_mode" => text(
            rec.extra
                .get("access_mode")
                .and_then(Json::as_str)
                .unwrap_or("public"),
        ),
        "tags" | "tag" => Some(Field::Text(rec.tags.clone())),
        "context" => Some(Field::Text(rec.context.keys().cloned().collect())),
        "context_values" => Some(Field::Text(rec.context.values().map(json_text).collect())),
        "metadata" => Some(Field::Text(rec.metadata.keys().cloned().collect())),
        "bytes" => num(Some(rec.bytes as f64)),
        "width" => num(rec.width.map(|v| v as f64)),
        "height" => num(rec.height.map(|v| v as f64)),
        "pixels" => num(rec
            .width
            .zip(rec.height)
            .map(|(w, h)| w.saturating_mul(h) as f64)),
        "aspect_ratio" => num(rec
            .width
            .zip(rec.height)
            .filter(|(_, h)| *h > 0)
            .map(|(w, h)| w as f64 / h as f64)),
        "pages" => num(rec.pages.map(|v| v as f64)),
        "version" => num(Some(rec.version as f64)),
        "duration" => num(rec.extra.get("duration").and_then(Json::as_f64)),
        "created_at" | "uploaded_at" | "last_updated" => Some(Field::Time(rec.created_at)),
        other => {
            let (map, key) = if let Some(k) = other.strip_prefix("context.") {
                (&rec.context, k)
            } else if let Some(k) = other.strip_prefix("metadata.") {
                (&rec.metadata, k)
            } else {
                return None;
            };
            let values = match map.get(key) {
                Some(Json::String(s)) => vec![s.clone()],
                Some(Json::Array(items)) => items.iter().map(json_text).collect(),
                Some(v) => vec![json_text(v)],
                None => vec![],
            };
            Some(Field::Text(values))
        }
    }
}

fn json_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The last segment of the public ID (without the extension raw public IDs carry).
pub fn filename(rec: &AssetRecord) -> String {
    let last = rec
        .key
        .public_id
        .rsplit('/')
        .next()
        .unwrap_or(&rec.key.public_id);
    if rec.key.resource_type == "raw" {
        if let Some((stem, _)) = last.rsplit_once('.') {
            return stem.to_string();
        }
    }
    last.to_string()
}

/// Fields a term without a field name searches in an asset (and its context values).
const TEXT_FIELDS: &[&str] = &[
    "public_id",
    "filename",
    "display_name",
    "asset_folder",
    "tags",
    "format",
    "context_values",
];

/// Whether `rec` matches `expr`; `now` (Unix seconds) anchors relative times.
pub fn matches(expr: &Expr, rec: &dyn Searchable, now: i64) -> Result<bool, String> {
    Ok(match expr {
        Expr::And(parts) => {
            for p in parts {
                if !matches(p, rec, now)? {
                    return Ok(false);
                }
            }
            true
        }
        Expr::Or(parts) => {
            for p in parts {
                if matches(p, rec, now)? {
                    return Ok(true);
                }
            }
            false
        }
        Expr::Not(e) => !matches(e, rec, now)?,
        Expr::Term(t) => match &t.field {
            None => {
                let mut hit = false;
                for name in rec.text_fields() {
                    if let Some(Field::Text(values)) = rec.field(name) {
                        hit |= values.iter().any(|v| text_match(v, t, true));
                    }
                }
                hit
            }
            Some(name) => match rec.field(name) {
                None => return Err(format!("unknown field {name}")),
                // A folder is one value, not words: `folder:a` is that folder only.
                Some(Field::Text(values))
                    if matches!(name.as_str(), "folder" | "asset_folder" | "path") =>
                {
                    values.iter().any(|v| folder_match(v, t))
                }
                Some(Field::Text(values)) => values.iter().any(|v| text_match(v, t, false)),
                Some(Field::Number(n)) => match n {
                    None => false,
                    Some(n) => compare(n, t, parse_number)?,
                },
                Some(Field::Time(ts)) => compare(ts as f64, t, |v| parse_time(v, now))?,
            },
        },
    })
}

pub(crate) fn text_match(v: &str, t: &Term, loose: bool) -> bool {
    match t.op {
        Op::Exact => {
            if t.prefix {
                v.starts_with(&t.value)
            } else {
                v == t.value
            }
        }
        Op::Match => {
            let (v, want) = (v.to_lowercase(), t.value.to_lowercase());
            if t.prefix {
                // `folder:a/*` is the folder and everything below it.
                let under = want.strip_suffix('/').map(|f| v == f).unwrap_or(false);
                return under
                    || v.starts_with(&want)
                    || (loose && tokens(&v).any(|w| w.starts_with(&want)));
            }
            v == want || tokens(&v).any(|w| w == want)
        }
        Op::Lt => v < t.value.as_str(),
        Op::Le => v <= t.value.as_str(),
        Op::Gt => v > t.value.as_str(),
        Op::Ge => v >= t.value.as_str(),
        Op::Range => {
            let high = t.high.as_deref().unwrap_or("*");
            let low_ok = t.value == "*"
                || if t.inclusive.0 {
                    v >= t.value.as_str()
                } else {
                    v > t.value.as_str()
                };
            let high_ok = high == "*" || if t.inclusive.1 { v <= high } else { v < high };
            low_ok && high_ok
        }
    }
}

fn folder_match(v: &str, t: &Term) -> bool {
    match t.op {
        Op::Match if !t.prefix => v.eq_ignore_ascii_case(t.value.trim_end_matches('/')),
        _ => text_match(v, t, false),
    }
}

/// Words of a text value (split at anything not a letter or digit).
fn tokens(v: &str) -> impl Iterator<Item = &str> {
    v.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// The numbers of a numeric term, read by `parse`: its value and, for a range, its upper
/// bound (`*`, an open bound, is none).
pub(crate) fn number_bounds(
    t: &Term,
    parse: impl Fn(&str) -> Option<f64>,
) -> Result<(Option<f64>, Option<f64>), String> {
    let bound = |v: &str| -> Result<Option<f64>, String> {
        if v == "*" {
            return Ok(None);
        }
        parse(v)
            .map(Some)
            .ok_or_else(|| format!("invalid value {v} for {}", t.field.as_deref().unwrap_or("")))
    };
    let value = bound(&t.value)?;
    let high = match t.op {
        Op::Range => bound(t.high.as_deref().unwrap_or("*"))?,
        _ => None,
    };
    Ok((value, high))
}

fn compare(n: f64, t: &Term, parse: impl Fn(&str) -> Option<f64>) -> Result<bool, String> {
    let (v, high) = number_bounds(t, parse)?;
    Ok(match t.op {
        Op::Match | Op::Exact => v.is_some_and(|v| (n - v).abs() < 1e-9),
        Op::Lt => v.is_some_and(|v| n < v),
        Op::Le => v.is_some_and(|v| n <= v),
        Op::Gt => v.is_some_and(|v| n > v),
        Op::Ge => v.is_some_and(|v| n >= v),
        Op::Range => {
            let low_ok = v.is_none_or(|v| if t.inclusive.0 { n >= v } else { n > v });
            let high_ok = high.is_none_or(|h| if t.inclusive.1 { n <= h } else { n < h });
            low_ok && high_ok
        }
    })
}

/// A number, a size with `k`/`m`/`g` (or `kb`/`mb`/`gb`), or a ratio such as `16:9`.
pub(crate) fn parse_number(v: &str) -> Option<f64> {
    let lower = v.trim().to_ascii_lowercase();
    if let Some((a, b)) = lower.split_once(':') {
        let (a, b) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
        return (b != 0.0).then(|| a / b);
    }
    // Cloudinary's examples write `bytes>1m`; `kb`/`mb`/`gb` are read too.
    for (unit, mult) in [
        ("kb", 1024.0),
        ("mb", 1024.0 * 1024.0),
        ("gb", 1024.0 * 1024.0 * 1024.0),
        ("k", 1024.0),
        ("m", 1024.0 * 1024.0),
        ("g", 1024.0 * 1024.0 * 1024.0),
    ] {
        if let Some(n) = lower.strip_suffix(unit) {
            return n.trim().parse::<f64>().ok().map(|n| n * mult);
        }
    }
    lower.parse::<f64>().ok()
}

/// A time as Unix seconds: an ISO date or time, or a relative age (`2d` = two days ago).
pub(crate) fn parse_time(v: &str, now: i64) -> Option<f64> {
    let v = v.trim();
    if let Some(unit) = v.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        if let Ok(n) = v[..v.len() - 1].parse::<i64>() {
            let secs = match unit.to_ascii_lowercase() {
                's' => 1,
                'h' => 3600,
                'd' => 86_400,
                'w' => 7 * 86_400,
                'm' => 30 * 86_400,
                'y' => 365 * 86_400,
                _ => return None,
            };
            return Some((now - n * secs) as f64);
        }
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Some(t.timestamp() as f64);
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, fmt) {
            return Some(t.and_utc().timestamp() as f64);
        }
    }
    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::AssetKey;
    use serde_json::json;

    fn asset(
        public_id: &str,
        folder: &str,
        tags: &[&str],
        bytes: i64,
        created_at: i64,
    ) -> AssetRecord {
        AssetRecord {
            asset_id: format!("id-{public_id}"),
            key: AssetKey {
                cloud: "demo".into(),
                resource_type: "image".into(),
                delivery_type: "upload".into(),
                public_id: public_id.into(),
            },
            version: 1,
            version_id: "v".into(),
            format: Some("png".into()),
            width: Some(1600),
            height: Some(900),
            pages: Some(1),
            bytes,
            etag: "e".into(),
            created_at,
            original_filename: None,
            display_name: public_id.rsplit('/').next().unwrap_or("").into(),
            asset_folder: folder.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            context: json!({"alt": "Red shoe", "n": "7"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            metadata: Default::default(),
            extra: Default::default(),
            blob_key: "b".into(),
            api_key: None,
        }
    }

    fn hit(expr: &str, rec: &AssetRecord) -> bool {
        let e = parse(expr).unwrap_or_else(|m| panic!("{expr}: {m}"));
        matches(&e, rec, 1_000_000).unwrap_or_else(|m| panic!("{expr}: {m}"))
    }

    #[test]
    fn fields_operators_and_boolean_logic() {
        let a = asset(
            "shop/red_shoe",
            "shop/shoes",
            &["sale", "Summer"],
            2 * 1024 * 1024,
            1_000_000 - 3600,
        );
        for yes in [
            "tags:sale",
            "tags=sale",
            "tags:summer",
            "tags=Summer",
            "folder:shop/shoes",
            "folder:shop/*",
            "asset_folder=shop/shoes",
            "public_id:shop/red*",
            "public_id=shop/red_shoe",
            "filename:red_shoe",
            "shoe",
            "red*",
            "resource_type:image AND format:png",
            "format:jpg OR format:png",
            "tags:sale tags:summer",
            "-tags:winter",
            "NOT tags:winter AND tags:sale",
            "(tags:winter OR tags:sale) AND bytes>1mb",
            "bytes:>=2mb",
            "bytes<3MB",
            "bytes>1m AND bytes<2049k",
            "width:[1000 TO 2000]",
            "width:{1599 TO *]",
            "pixels>1000000",
            "aspect_ratio:\"16:9\"",
            "aspect_ratio>1.5",
            "created_at>1d",
            "uploaded_at:[1970-01-01 TO *]",
            "context.alt:red",
            "context.alt=\"Red shoe\"",
            "context:alt",
            "status:active",
        ] {
            assert!(hit(yes, &a), "{yes} should match");
        }
        for no in [
            "tags=summer",
            "tags:winter",
            "folder:shop",
            "folder:other/*",
            "public_id=shop/red",
            "format:jpg",
            "tags:sale AND tags:winter",
            "-tags:sale",
            "bytes>2mb",
            "created_at<1d",
            "width:{1600 TO *]",
            "context.alt:blue",
            "context.missing:x",
            "boot",
        ] {
            assert!(!hit(no, &a), "{no} should not match");
        }
    }

    #[test]
    fn syntax_errors_are_reported() {
        for bad in ["(tags:a", "tags:", "tags:[1 TO", "AND", "\"open", "tags:a)"] {
            assert!(parse(bad).is_err(), "{bad} should not parse");
        }
        let e = parse("nosuchfield:1").unwrap();
        assert!(matches(&e, &asset("a", "", &[], 1, 0), 0).is_err());
        // Deep nesting is refused, not a stack overflow.
        assert!(parse(&"-".repeat(4000)).is_err());
        assert!(parse(&format!("{}a{}", "(".repeat(2000), ")".repeat(2000))).is_err());
        assert!(parse(&format!("{}a{}", "(".repeat(10), ")".repeat(10))).is_ok());
        assert!(parse(&"a ".repeat(6000)).is_err());
    }
}
