//! The `eval` upload parameter: a small JavaScript snippet run once the file is known. It reads
//! `resource_info` (width, height, format, bytes, …) and sets `upload_options` (tags, context,
//! analysis flags, …), which then apply as if they had been sent.
//!
//! nephos evaluates the subset such snippets use: statements separated by `;`, `if (…) {…}
//! [else {…}]`, assignments to `upload_options.x` / `upload_options["x"]`, string, number,
//! boolean and array literals, `resource_info` members, `+ - * /`, comparisons, `&& || !` and
//! parentheses. No loops or calls, so every snippet ends; length and nesting are bounded.

use serde_json::{json, Map, Value as Json};

use crate::error::{ApiError, ApiResult};
use crate::form::{Params, Value};

/// Characters of `eval` accepted.
const MAX_LEN: usize = 4096;
/// Nesting of expressions and blocks accepted.
const MAX_DEPTH: usize = 32;
/// Values (array elements, counted through nesting) one value may hold.
const MAX_NODES: usize = 1000;

/// What `upload_options` may set.
const SETTABLE: &[&str] = &[
    "tags",
    "context",
    "metadata",
    "display_name",
    "quality_analysis",
    "colors",
    "phash",
    "image_metadata",
    "media_metadata",
    "faces",
    "face_coordinates",
    "custom_coordinates",
    "access_mode",
    "backup",
];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Op(&'static str),
}

fn bad(msg: impl std::fmt::Display) -> ApiError {
    ApiError::bad(format!("Invalid eval - {msg}"))
}

fn lex(src: &str) -> ApiResult<Vec<Tok>> {
    const OPS: &[&str] = &[
        "===", "!==", "==", "!=", "<=", ">=", "&&", "||", "<", ">", "+", "-", "*", "/", "!", "=",
        "(", ")", "{", "}", "[", "]", ";", ",", ".",
    ];
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            out.push(Tok::Num(
                text.parse().map_err(|_| bad(format!("number {text}")))?,
            ));
        } else if c == '"' || c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(bad("unterminated string")),
                    Some(q) if *q == c => break,
                    Some('\\') => {
                        i += 1;
                        match chars.get(i) {
                            Some('n') => s.push('\n'),
                            Some(other) => s.push(*other),
                            None => return Err(bad("unterminated string")),
                        }
                    }
                    Some(other) => s.push(*other),
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if c.is_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else {
            let rest: String = chars[i..chars.len().min(i + 3)].iter().collect();
            let op = OPS
                .iter()
                .find(|op| rest.starts_with(*op))
                .ok_or_else(|| bad(format!("unexpected {c}")))?;
            out.push(Tok::Op(op));
            i += op.chars().count();
        }
    }
    Ok(out)
}

struct Interp<'a> {
    toks: Vec<Tok>,
    pos: usize,
    info: &'a Map<String, Json>,
    options: Map<String, Json>,
    depth: usize,
}

fn nodes(v: &Json) -> usize {
    match v {
        Json::Array(a) => 1 + a.iter().map(nodes).sum::<usize>(),
        _ => 1,
    }
}

fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Json::String(s) => !s.is_empty(),
        _ => true,
    }
}

fn text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        Json::Null => "undefined".into(),
        Json::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn num(v: &Json) -> f64 {
    match v {
        Json::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Json::Bool(b) => f64::from(u8::from(*b)),
        Json::String(s) => s.trim().parse().unwrap_or(f64::NAN),
        Json::Null => f64::NAN,
        _ => f64::NAN,
    }
}

fn number(f: f64) -> Json {
    serde_json::Number::from_f64(f)
        .map(Json::Number)
        .unwrap_or(Json::Null)
}

impl Interp<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> ApiResult<()> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(bad(format!("expected {op}")))
        }
    }

    fn deeper(&mut self) -> ApiResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(bad("nested too deeply"));
        }
        Ok(())
    }

    /// Runs statements until the end or a closing brace; `run` false skips their effects.
    fn block(&mut self, run: bool) -> ApiResult<()> {
        self.deeper()?;
        while let Some(t) = self.peek() {
            if *t == Tok::Op("}") {
                break;
            }
            if self.eat(";") {
                continue;
            }
            self.statement(run)?;
        }
        self.depth -= 1;
        Ok(())
    }

    fn statement(&mut self, run: bool) -> ApiResult<()> {
        self.deeper()?;
        let done = self.statement_inner(run);
        self.depth -= 1;
        done
    }

    fn statement_inner(&mut self, run: bool) -> ApiResult<()> {
        if self.peek() == Some(&Tok::Ident("if".into())) {
            self.pos += 1;
            self.expect("(")?;
            let cond = self.expr()?;
            self.expect(")")?;
            let take = run && truthy(&cond);
            self.branch(take)?;
            if self.peek() == Some(&Tok::Ident("else".into())) {
                self.pos += 1;
                self.branch(run && !truthy(&cond))?;
            }
            return Ok(());
        }
        // upload_options.x = …  or  upload_options["x"] = …
        match self.peek() {
            Some(Tok::Ident(n)) if n == "upload_options" => self.pos += 1,
            _ => return Err(bad("statements must assign upload_options")),
        }
        let key = if self.eat(".") {
            match self.peek().cloned() {
                Some(Tok::Ident(k)) => {
                    self.pos += 1;
                    k
                }
                _ => return Err(bad("expected a name after upload_options.")),
            }
        } else {
            self.expect("[")?;
            let k = text(&self.expr()?);
            self.expect("]")?;
            k
        };
        self.expect("=")?;
        let value = self.expr()?;
        if run {
            if !SETTABLE.contains(&key.as_str()) {
                return Err(bad(format!("upload_options.{key} cannot be set")));
            }
            self.options.insert(key, value);
        }
        Ok(())
    }

    fn branch(&mut self, run: bool) -> ApiResult<()> {
        if self.eat("{") {
            self.block(run)?;
            self.expect("}")
        } else {
            self.statement(run)
        }
    }

    fn expr(&mut self) -> ApiResult<Json> {
        self.deeper()?;
        let v = self.or()?;
        self.depth -= 1;
        Ok(v)
    }

    fn or(&mut self) -> ApiResult<Json> {
        let mut v = self.and()?;
        while self.eat("||") {
            let r = self.and()?;
            v = if truthy(&v) { v } else { r };
        }
        Ok(v)
    }

    fn and(&mut self) -> ApiResult<Json> {
        let mut v = self.compare()?;
        while self.eat("&&") {
            let r = self.compare()?;
            v = if truthy(&v) { r } else { v };
        }
        Ok(v)
    }

    fn compare(&mut self) -> ApiResult<Json> {
        let l = self.sum()?;
        for op in ["===", "!==", "==", "!=", "<=", ">=", "<", ">"] {
            if self.eat(op) {
                let r = self.sum()?;
                let both_num = l.is_number() && r.is_number();
                let res = match op {
                    "===" | "==" => {
                        if both_num {
                            num(&l) == num(&r)
                        } else {
                            text(&l) == text(&r)
                        }
                    }
                    "!==" | "!=" => {
                        if both_num {
                            num(&l) != num(&r)
                        } else {
                            text(&l) != text(&r)
                        }
                    }
                    _ if l.is_string() && r.is_string() => {
                        let (a, b) = (text(&l), text(&r));
                        match op {
                            "<" => a < b,
                            ">" => a > b,
                            "<=" => a <= b,
                            _ => a >= b,
                        }
                    }
                    _ => {
                        let (a, b) = (num(&l), num(&r));
                        match op {
                            "<" => a < b,
                            ">" => a > b,
                            "<=" => a <= b,
                            _ => a >= b,
                        }
                    }
                };
                return Ok(Json::Bool(res));
            }
        }
        Ok(l)
    }

    fn sum(&mut self) -> ApiResult<Json> {
        let mut v = self.product()?;
        loop {
            if self.eat("+") {
                let r = self.product()?;
                v = if v.is_number() && r.is_number() {
                    number(num(&v) + num(&r))
                } else {
                    let s = text(&v) + &text(&r);
                    if s.len() > MAX_LEN {
                        return Err(bad("string too long"));
                    }
                    json!(s)
                };
            } else if self.eat("-") {
                let r = self.product()?;
                v = number(num(&v) - num(&r));
            } else {
                return Ok(v);
            }
        }
    }

    fn product(&mut self) -> ApiResult<Json> {
        let mut v = self.unary()?;
        loop {
            if self.eat("*") {
                v = number(num(&v) * num(&self.unary()?));
            } else if self.eat("/") {
                v = number(num(&v) / num(&self.unary()?));
            } else {
                return Ok(v);
            }
        }
    }

    fn unary(&mut self) -> ApiResult<Json> {
        if self.eat("!") {
            self.deeper()?;
            let v = Json::Bool(!truthy(&self.unary()?));
            self.depth -= 1;
            return Ok(v);
        }
        if self.eat("-") {
            self.deeper()?;
            let v = number(-num(&self.unary()?));
            self.depth -= 1;
            return Ok(v);
        }
        self.primary()
    }

    fn primary(&mut self) -> ApiResult<Json> {
        let tok = self.peek().cloned().ok_or_else(|| bad("unexpected end"))?;
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(number(n)),
            Tok::Str(s) => Ok(json!(s)),
            Tok::Op("(") => {
                let v = self.expr()?;
                self.expect(")")?;
                Ok(v)
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.expr()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                let v = Json::Array(items);
                if nodes(&v) > MAX_NODES {
                    return Err(bad("a value is too large"));
                }
                Ok(v)
            }
            Tok::Ident(n) if n == "true" => Ok(json!(true)),
            Tok::Ident(n) if n == "false" => Ok(json!(false)),
            Tok::Ident(n) if n == "null" || n == "undefined" => Ok(Json::Null),
            Tok::Ident(n) if n == "resource_info" || n == "upload_options" => {
                let key = if self.eat(".") {
                    match self.peek().cloned() {
                        Some(Tok::Ident(k)) => {
                            self.pos += 1;
                            k
                        }
                        _ => return Err(bad("expected a member name")),
                    }
                } else {
                    self.expect("[")?;
                    let k = text(&self.expr()?);
                    self.expect("]")?;
                    k
                };
                let source = if n == "resource_info" {
                    self.info
                } else {
                    &self.options
                };
                Ok(source.get(&key).cloned().unwrap_or(Json::Null))
            }
            other => Err(bad(format!("unexpected {other:?}"))),
        }
    }
}

/// Runs `eval` against `info` and returns the options it set.
pub fn run(src: &str, info: &Map<String, Json>) -> ApiResult<Map<String, Json>> {
    if src.len() > MAX_LEN {
        return Err(bad(format!("longer than {MAX_LEN} characters")));
    }
    let mut interp = Interp {
        toks: lex(src)?,
        pos: 0,
        info,
        options: Map::new(),
        depth: 0,
    };
    interp.block(true)?;
    if interp.pos != interp.toks.len() {
        return Err(bad("unexpected }"));
    }
    Ok(interp.options)
}

/// Applies the options `eval` set to the upload's parameters.
pub fn apply(params: &mut Params, options: Map<String, Json>) {
    for (k, v) in options {
        let value = match &v {
            Json::Array(items) => Value::Text(items.iter().map(text).collect::<Vec<_>>().join(",")),
            Json::Bool(b) => Value::Text(if *b { "true" } else { "false" }.into()),
            Json::Null => {
                params.remove(&k);
                continue;
            }
            other => Value::Text(text(other)),
        };
        params.set(&k, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Map<String, Json> {
        json!({"width": 241, "height": 51, "format": "png"})
            .as_object()
            .cloned()
            .unwrap()
    }

    #[test]
    fn the_sdk_examples_run() {
        let o = run(
            r#"if (resource_info["width"] < 450) { upload_options["quality_analysis"] = true }; upload_options["context"] = "width=" + resource_info["width"]"#,
            &info(),
        )
        .unwrap();
        assert_eq!(o["quality_analysis"], json!(true));
        assert_eq!(o["context"], json!("width=241"));
        let o = run(
            "if (resource_info.width > 1000) { upload_options.tags = ['big'] } else { upload_options.tags = ['small', resource_info.format] }",
            &info(),
        )
        .unwrap();
        assert_eq!(o["tags"], json!(["small", "png"]));
    }

    #[test]
    fn hostile_snippets_are_refused() {
        for src in [
            "while (true) {}",
            "upload_options.public_id = 'x'",
            "upload_options.tags = (((((((((((((((((((((((((((((((((((1)))))))))))))))))))))))))))))))))))",
            "upload_options.tags = 'unterminated",
            "require('fs')",
        ] {
            assert!(run(src, &info()).is_err(), "{src}");
        }
        assert!(run(&"x".repeat(MAX_LEN + 1), &info()).is_err());
        let doubling = "upload_options.tags = [1];".to_string()
            + &"upload_options.tags = [upload_options.tags, upload_options.tags];".repeat(30);
        assert!(run(&doubling, &info()).is_err());
        assert!(run(&"if (1) ".repeat(100), &info()).is_err());
    }
}
