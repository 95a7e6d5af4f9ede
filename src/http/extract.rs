//! Reading request bodies: multipart, urlencoded and JSON, merged over the query string. A
//! multipart body of at most 256 KiB is read whole and its parts taken where they lie; a
//! larger one is parsed as it streams, its `file` part written to a temporary file as it
//! arrives (a file part is held in memory only up to 256 KiB).

use axum::body::Body;
use axum::http::{header, HeaderMap};
use futures_util::StreamExt;
use serde_json::Value as Json;

use crate::error::{ApiError, ApiResult};
use crate::form::{
    base_name, parse_query, FileMirror, FilePart, FilePlacement, Form, MemoryBudget, Mirror,
    Params, Value,
};
use crate::storage::{BlobWriter, Hashing, WriteError};

use super::file_data::FileData;

/// A check of the fields that came before the file part.
pub type EarlyCheck = std::sync::Arc<dyn Fn(&Params) -> ApiResult<()> + Send + Sync>;

/// Limits applied while reading a body.
#[derive(Clone)]
pub struct BodyLimits {
    pub max_file_bytes: u64,
    /// Bytes of the fields other than the file, all together (kept in memory).
    pub max_field_bytes: u64,
    /// Parameters one request may carry.
    pub max_fields: usize,
    /// How long the body may pause between two pieces.
    pub idle: std::time::Duration,
    /// Room for request text in memory, shared by all requests.
    pub budget: Option<MemoryBudget>,
    /// Where a file part may be written in place (chunked uploads).
    pub placement: Option<std::sync::Arc<dyn FilePlacement>>,
    /// Where a whole file part may also be sent while it arrives (an object store).
    pub mirror: Option<std::sync::Arc<dyn FileMirror>>,
    /// Checked when the file part starts, on the fields before it: a definite refusal stops
    /// the request before the file is read.
    pub early_check: Option<EarlyCheck>,
}

/// Reads the request body (any of the three encodings) and merges the query string under it
/// (the body wins).
/// Values (nested ones included) a JSON body may hold.
const MAX_JSON_VALUES: usize = 100_000;

/// Bytes of an over-large file part still read (to answer cleanly) before giving up on it.
const OVERFLOW_DRAIN: u64 = 16 * 1024 * 1024;

/// Multipart bodies up to this length (a file part this small is kept in memory anyway) are
/// read whole before they are parsed.
const WHOLE_BODY_BYTES: u64 = crate::storage::temp::SPILL_BYTES as u64;

/// Header bytes of one part that the in-place parser reads (more goes to multer).
const PART_HEAD_BYTES: usize = 8 * 1024;

/// Header lines of one part that multer reads (more is an error there).
const MAX_PART_HEADERS: usize = 32;

/// A body whose every piece must arrive within `idle` of the previous one.
fn with_idle_deadline(body: Body, idle: std::time::Duration) -> Body {
    let stream =
        futures_util::stream::unfold(Some(body.into_data_stream()), move |state| async move {
            let mut s = state?;
            match tokio::time::timeout(idle, s.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(s))),
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no data for {} seconds", idle.as_secs()),
                    )),
                    None,
                )),
            }
        });
    // Readers may poll again after the end (multer, the trailing drain): fused.
    Body::from_stream(stream.fuse())
}

pub async fn read_form(
    headers: &HeaderMap,
    query: Option<&str>,
    body: Body,
    tmp_dir: &std::path::Path,
    limits: &BodyLimits,
) -> ApiResult<Form> {
    let body = with_idle_deadline(body, limits.idle);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let mime = if mime.eq_ignore_ascii_case("multipart/form-data") {
        "multipart/form-data"
    } else if mime.eq_ignore_ascii_case("application/json") {
        "application/json"
    } else {
        ""
    };
    let mut form = match mime {
        "multipart/form-data" => {
            // A small body whose length is given is read whole, then parsed in place: its file
            // part stays where it arrived, and its fields take one copy each.
            let whole = limits.placement.is_none()
                && limits.mirror.is_none()
                && super::content_length(headers).is_some_and(|n| n <= WHOLE_BODY_BYTES);
            if whole {
                read_whole_multipart(content_type, body, tmp_dir, limits).await?
            } else {
                // Boxed (multer's state is large): a small body's future stays small.
                Box::pin(read_multipart(content_type, body, tmp_dir, limits, None)).await?
            }
        }
        "application/json" => {
            let mut budget = Vec::new();
            let bytes = read_limited(body, limits, &mut budget).await?;
            let mut params = Params::default();
            let mut raw = None;
            if !bytes.iter().all(|b| b.is_ascii_whitespace()) {
                // Every value takes memory once parsed (several times its text): their number is
                // bounded before parsing (a separator or an opening bracket each, at most).
                let values = bytes
                    .iter()
                    .filter(|b| matches!(b, b',' | b'[' | b'{'))
                    .count();
                if values > MAX_JSON_VALUES {
                    return Err(ApiError::bad(format!(
                        "Invalid JSON body: too many values (at most {MAX_JSON_VALUES})"
                    )));
                }
                let object = parse_object(&bytes, limits.max_fields)?;
                for (k, v) in &object {
                    push_json(&mut params, k, v.clone());
                }
                raw = Some(Json::Object(object));
            }
            Form {
                params,
                file: None,
                json: raw,
                budget,
            }
        }
        _ => {
            // application/x-www-form-urlencoded, or no type at all (an empty body).
            let mut budget = Vec::new();
            let bytes = read_limited(body, limits, &mut budget).await?;
            let mut params = Params::default();
            if !bytes.is_empty() {
                // Counted before parsing: a field is a `&`-separated item.
                if bytes.split(|b| *b == b'&').count() > limits.max_fields {
                    return Err(too_many(limits.max_fields));
                }
                let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
                    .map_err(|e| ApiError::bad(format!("Invalid form body: {e}")))?;
                for (k, v) in pairs {
                    params.push(&k, &v);
                }
            }
            Form {
                params,
                file: None,
                json: None,
                budget,
            }
        }
    };
    form.params.merge_missing(parse_query(query));
    Ok(form)
}

/// A JSON object of at most `max` keys, refused as soon as the key after the last allowed one
/// is read (a body of half a million keys costs no more than one of `max`).
fn parse_object(bytes: &[u8], max: usize) -> ApiResult<serde_json::Map<String, Json>> {
    use serde::de::{Deserializer, Error, MapAccess, Visitor};
    struct Limited(usize);
    impl<'de> Visitor<'de> for Limited {
        type Value = serde_json::Map<String, Json>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut out = serde_json::Map::new();
            while let Some((k, v)) = access.next_entry::<String, Json>()? {
                if out.len() >= self.0 {
                    return Err(A::Error::custom(TOO_MANY));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    const TOO_MANY: &str = "\u{0}too many keys";
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match de
        .deserialize_map(Limited(max))
        .and_then(|m| de.end().map(|()| m))
    {
        Ok(m) => Ok(m),
        Err(e) if e.to_string().starts_with(TOO_MANY) => Err(too_many(max)),
        Err(e) if e.is_data() => Err(ApiError::bad("Invalid JSON body: expected an object")),
        Err(e) => Err(ApiError::bad(format!("Invalid JSON body: {e}"))),
    }
}

fn json_text(v: &Json) -> Option<String> {
    match v {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        Json::Bool(b) => Some(b.to_string()),
        Json::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

fn push_json(params: &mut Params, key: &str, v: Json) {
    match v {
        Json::Null => {}
        Json::Array(items) => {
            let (name, _) = base_name(key);
            let list: Vec<String> = items.iter().filter_map(json_text).collect();
            params.set(name, Value::List(list));
        }
        other => {
            if let Some(t) = json_text(&other) {
                params.push(key, &t);
            }
        }
    }
}

async fn read_limited(
    body: Body,
    limits: &BodyLimits,
    held: &mut Vec<tokio::sync::OwnedSemaphorePermit>,
) -> ApiResult<Vec<u8>> {
    let limit = limits.max_field_bytes;
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad(format!("Error reading request body: {e}")))?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(ApiError::bad(format!(
                "Request body too large. Maximum is {limit} bytes."
            )));
        }
        if let Some(b) = &limits.budget {
            b.take(chunk.len(), held)?;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn too_many(max: usize) -> ApiError {
    ApiError::bad(format!("Too many parameters. Maximum is {max}."))
}

fn too_large(got: u64, max: u64) -> ApiError {
    ApiError::bad(format!("File size too large. Got {got}. Maximum is {max}."))
}

async fn read_multipart(
    content_type: &str,
    body: Body,
    tmp_dir: &std::path::Path,
    limits: &BodyLimits,
    cut_short: Option<&std::sync::atomic::AtomicBool>,
) -> ApiResult<Form> {
    read_multipart_as(content_type, body, tmp_dir, limits, cut_short, true).await
}

/// Bytes of a streamed body's beginning read to find its file part's data (fields longer
/// than that all together are left to multer).
const HEAD_BYTES: usize = 256 * 1024;

/// Reads a streamed multipart body. With `in_place`, a body whose parts up to the file part
/// are written the usual way (see [`simple_head`]) has them taken from its first bytes, and
/// the file part's data from the body's pieces as they arrive, never copied
/// ([`FileData`]); multer reads the rest (usually only the closing delimiter), and every
/// other body. Without, multer reads it all (tests compare the two).
async fn read_multipart_as(
    content_type: &str,
    body: Body,
    tmp_dir: &std::path::Path,
    limits: &BodyLimits,
    cut_short: Option<&std::sync::atomic::AtomicBool>,
    in_place: bool,
) -> ApiResult<Form> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| ApiError::bad("Invalid multipart body: missing boundary"))?;
    let bad = |e: multer::Error| {
        // A body that ended before the form did (told apart for a body replayed after it
        // failed).
        if let (
            Some(flag),
            multer::Error::IncompleteStream
            | multer::Error::IncompleteFieldData { .. }
            | multer::Error::IncompleteHeaders,
        ) = (cut_short, &e)
        {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        ApiError::bad(format!("Invalid multipart body: {e}"))
    };
    // multer stops reading at the closing boundary; the body stays shared so that what the
    // client still sends after it (the chunked-encoding terminator, an epilogue) is read too.
    // A response sent before the body is consumed makes the connection close under a client
    // that is still writing (EPIPE in Node).
    let shared = std::sync::Arc::new(tokio::sync::Mutex::new(body.into_data_stream()));
    let mut reading = Reading::default();
    // What multer reads before the rest of the body.
    let mut before: Vec<bytes::Bytes> = Vec::new();
    let mut file_in_place = false;
    if in_place && !boundary.contains(['\r', '\n']) {
        let mut body = shared.lock().await;
        match read_head(&mut *body, &boundary).await {
            Ok(head) => match simple_head(&head, &boundary) {
                Some(Head::File(parts, filename, data_at)) => {
                    file_in_place = true;
                    for part in parts {
                        reading.count(limits)?;
                        let data = &head[part.data.clone()];
                        reading
                            .text
                            .take(part.name, data.len(), limits, &mut reading.form)?;
                        push_text(&mut reading.form.params, part.name, data.to_vec());
                    }
                    reading.count(limits)?;
                    let file_len = limits
                        .mirror
                        .as_ref()
                        .and_then(|m| last_part_len(m.body_length(), data_at as u64, &boundary));
                    let mut data = FileData::new(&mut *body, &boundary, head.slice(data_at..));
                    let source = FileSource::InPlace(&mut data);
                    take_file(
                        &mut reading,
                        filename,
                        source,
                        file_len,
                        tmp_dir,
                        limits,
                        &bad,
                    )
                    .await?;
                    before = data.into_rest();
                }
                _ => before.push(head),
            },
            Err((read, None)) => before.extend(read),
            Err((read, Some(failed))) => {
                drop(body);
                let read = read.into_iter().collect();
                return Box::pin(read_before_failure(
                    content_type,
                    read,
                    failed,
                    tmp_dir,
                    limits,
                ))
                .await;
            }
        }
    }
    // With a mirror, the body's first bytes are kept to find where the file part starts.
    let head = (limits.mirror.is_some() && !file_in_place).then(BodyHead::default);
    let rest = futures_util::stream::unfold(shared.clone(), |s| async move {
        let item = s.lock().await.next().await;
        item.map(|i| (i, s))
    });
    let stream = futures_util::stream::iter(before.into_iter().map(Ok))
        .chain(rest)
        .map({
            let head = head.clone();
            move |item| {
                if let (Some(h), Ok(chunk)) = (&head, &item) {
                    h.keep(chunk);
                }
                item
            }
        });
    let multipart = Multipart {
        parts: multer::Multipart::new(stream, boundary.clone()),
        boundary,
        head,
    };
    let form = parse_multipart(multipart, reading, tmp_dir, limits, &bad).await?;
    let mut rest = shared.lock().await;
    let mut trailing = 0usize;
    while let Some(Ok(chunk)) = rest.next().await {
        trailing += chunk.len();
        if trailing > 1024 * 1024 {
            break;
        }
    }
    Ok(form)
}

/// Reads the pieces of a body that then failed as if multer had read them while the body
/// stalled: a form complete before the failure is taken (the rest of the body would only have
/// been drained), fields refused as they came are refused, and a form still waiting for more
/// meets the failure.
async fn read_before_failure(
    content_type: &str,
    pieces: Vec<bytes::Bytes>,
    failure: axum::Error,
    tmp_dir: &std::path::Path,
    limits: &BodyLimits,
) -> ApiResult<Form> {
    let ended = Body::from_stream(futures_util::stream::iter(
        pieces.into_iter().map(Ok::<_, axum::Error>),
    ));
    let cut_short = std::sync::atomic::AtomicBool::new(false);
    let read = read_multipart_as(
        content_type,
        ended,
        tmp_dir,
        limits,
        Some(&cut_short),
        false,
    );
    match Box::pin(read).await {
        Err(_) if cut_short.load(std::sync::atomic::Ordering::Relaxed) => {
            let failed = multer::Error::StreamReadFailed(Box::new(failure));
            Err(ApiError::bad(format!("Invalid multipart body: {failed}")))
        }
        done => done,
    }
}

/// The bytes of a body read to no avail, and the failure that ended them.
type ReadInstead = (Option<bytes::Bytes>, Option<axum::Error>);

/// Reads the beginning of a body until it holds the data of a file part written the usual
/// way ([`simple_head`]), and returns it in one piece; otherwise, once it tells that it does
/// not (or it ends, fails, or reaches [`HEAD_BYTES`]), what was read, and the failure that
/// ended it. Pieces after the first are copied together: each piece is a slice of the buffer
/// the connection read it into, and a client sending a few bytes at a time would otherwise
/// have every one of them keep a buffer of its own.
async fn read_head<S>(body: &mut S, boundary: &str) -> Result<bytes::Bytes, ReadInstead>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin,
{
    // The first piece as it came, while it is the only one; else all of them, copied.
    let mut first: Option<bytes::Bytes> = None;
    let mut joined = bytes::BytesMut::new();
    let read = |first: Option<bytes::Bytes>, joined: bytes::BytesMut| {
        first.or_else(|| (!joined.is_empty()).then(|| joined.freeze()))
    };
    let mut looked_at = 0usize;
    loop {
        match body.next().await {
            Some(Ok(piece)) if piece.is_empty() => continue,
            Some(Ok(piece)) => match first.take() {
                None if joined.is_empty() => first = Some(piece),
                earlier => {
                    if let Some(f) = earlier {
                        joined.extend_from_slice(&f);
                    }
                    joined.extend_from_slice(&piece);
                }
            },
            Some(Err(e)) => return Err((read(first, joined), Some(e))),
            None => return Err((read(first, joined), None)),
        }
        let len = first.as_ref().map_or(joined.len(), bytes::Bytes::len);
        // Looked at again once it has doubled: a body arriving a few bytes at a time is not
        // parsed over and over.
        if len < 2 * looked_at && len < HEAD_BYTES {
            continue;
        }
        looked_at = len;
        let bytes: &[u8] = first.as_deref().unwrap_or(&joined);
        match simple_head(bytes, boundary) {
            Some(Head::File(..)) => return Ok(read(first, joined).unwrap_or_default()),
            Some(Head::Short) if len < HEAD_BYTES => {}
            _ => return Err((read(first, joined), None)),
        }
    }
}

/// Reads a small multipart body whole, then takes its parts from it in place when they are
/// written the usual way (see [`simple_parts`]); anything else, a body that fails to arrive
/// included, goes through multer as a streamed body would.
async fn read_whole_multipart(
    content_type: &str,
    body: Body,
    tmp_dir: &std::path::Path,
    limits: &BodyLimits,
) -> ApiResult<Form> {
    let parsed;
    let boundary = match plain_boundary(content_type) {
        Some(boundary) => boundary,
        None => {
            parsed = multer::parse_boundary(content_type)
                .map_err(|_| ApiError::bad("Invalid multipart body: missing boundary"))?;
            parsed.as_str()
        }
    };
    let mut stream = body.into_data_stream();
    let mut pieces: Vec<bytes::Bytes> = Vec::with_capacity(4);
    let mut total = 0u64;
    let mut failed = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(piece) => {
                total += piece.len() as u64;
                pieces.push(piece);
                // The length was given: hyper holds the body to it. Past it all the same,
                // the rest is streamed.
                if total > WHOLE_BODY_BYTES {
                    break;
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // The pieces read, again as a stream.
    let replay = |pieces: Vec<bytes::Bytes>| {
        futures_util::stream::iter(pieces.into_iter().map(Ok::<_, axum::Error>))
    };
    if total > WHOLE_BODY_BYTES {
        let body = Body::from_stream(replay(pieces).chain(stream));
        return Box::pin(read_multipart(content_type, body, tmp_dir, limits, None)).await;
    }
    if let Some(e) = failed {
        // As if streamed, where what arrived was parsed while the body stalled: a form
        // complete before the failure is taken (the rest of the body was only drained), and
        // fields refused as they came are refused; a form still waiting for more meets the
        // failure.
        return Box::pin(read_before_failure(
            content_type,
            pieces,
            e,
            tmp_dir,
            limits,
        ))
        .await;
    }
    let whole = match pieces.len() {
        1 => pieces.swap_remove(0),
        _ => {
            let mut joined = bytes::BytesMut::with_capacity(total as usize);
            for piece in &pieces {
                joined.extend_from_slice(piece);
            }
            joined.freeze()
        }
    };
    let Some(parts) = simple_parts(&whole, boundary) else {
        return Box::pin(read_multipart(
            content_type,
            Body::from(whole),
            tmp_dir,
            limits,
            None,
        ))
        .await;
    };
    let mut form = Form::default();
    let mut text = TextFields::default();
    for (fields, part) in parts.iter().enumerate() {
        if fields + 1 > limits.max_fields {
            return Err(too_many(limits.max_fields));
        }
        let data = &whole[part.data.clone()];
        match part.filename {
            Some(filename) if part.name == "file" => {
                if let Some(check) = &limits.early_check {
                    check(&fields_so_far(&form.params))?;
                }
                // Not hashed here: an upload's content in memory is hashed with the other rows
                // of its batch as its row is written (`MetaStore::save_asset_hashing`).
                let mut writer =
                    BlobWriter::create_with(tmp_dir, limits.max_file_bytes, Hashing::Off).await?;
                match writer.write(whole.slice(part.data.clone())).await {
                    Ok(()) => {}
                    Err(WriteError::TooLarge { .. }) => {
                        return Err(too_large(data.len() as u64, limits.max_file_bytes))
                    }
                    Err(WriteError::Io(e)) => return Err(e.into()),
                }
                form.file = Some(FilePart {
                    blob: writer.finish().await?,
                    filename: filename.to_string(),
                });
            }
            _ => {
                text.take(part.name, data.len(), limits, &mut form)?;
                push_text(&mut form.params, part.name, data.to_vec());
            }
        }
    }
    Ok(form)
}

/// The boundary of a form's type written the usual way, `multipart/form-data; boundary=` and a
/// plain token to the end, read in place; `None` for any other writing (quoted, more
/// parameters), which multer's parser reads.
fn plain_boundary(content_type: &str) -> Option<&str> {
    const TYPE: &str = "multipart/form-data;";
    const PARAM: &str = "boundary=";
    if !content_type.get(..TYPE.len())?.eq_ignore_ascii_case(TYPE) {
        return None;
    }
    let rest = content_type[TYPE.len()..].trim_start_matches(' ');
    if !rest.get(..PARAM.len())?.eq_ignore_ascii_case(PARAM) {
        return None;
    }
    let value = &rest[PARAM.len()..];
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.'+".contains(&b);
    (!value.is_empty() && value.bytes().all(plain)).then_some(value)
}

/// One part of a body read whole: its name, file name, and where its data lies.
#[derive(Debug, PartialEq)]
struct SimplePart<'a> {
    name: &'a str,
    filename: Option<&'a str>,
    data: std::ops::Range<usize>,
}

/// The parts of a whole multipart body, when it is written the way the SDKs, browsers and
/// HTTP libraries write one: no preamble, a line break after each delimiter, well-formed
/// header lines, and one `Content-Disposition: form-data` with a quoted `name` (and perhaps
/// a quoted `filename`) holding no quote, backslash or semicolon. `None` for anything else:
/// multer reads those (and tells what is wrong with a broken body).
fn simple_parts<'a>(body: &'a [u8], boundary: &str) -> Option<Vec<SimplePart<'a>>> {
    let delimiter = super::file_data::delimiter(boundary);
    let reader = SimpleReader::new(&delimiter);
    let mut parts = Vec::with_capacity(8);
    let mut at = reader.opening(body)?;
    loop {
        match reader.step(body, at, true)? {
            Step::Part(part, next) => {
                parts.push(part);
                at = next;
            }
            Step::Closing => return Some(parts),
            Step::File(..) | Step::Short => return None,
        }
    }
}

/// The beginning of a streamed multipart body, up to where its file part's data starts.
#[derive(Debug, PartialEq)]
enum Head<'a> {
    /// The parts before the file part (written as [`simple_parts`] takes them), the file
    /// part's file name, and where its data starts.
    File(Vec<SimplePart<'a>>, &'a str, usize),
    /// The bytes so far do not tell yet.
    Short,
}

/// Reads the beginning of a streamed multipart body as [`simple_parts`] reads a whole one, up
/// to the data of the part named `file` with a file name; `None` when the body is not written
/// the usual way, or ends (its closing delimiter) before such a part.
fn simple_head<'a>(body: &'a [u8], boundary: &str) -> Option<Head<'a>> {
    let delimiter = super::file_data::delimiter(boundary);
    let reader = SimpleReader::new(&delimiter);
    let Some(mut at) = reader.opening(body) else {
        return reader.delimiter[2..]
            .starts_with(body)
            .then_some(Head::Short);
    };
    let mut parts = Vec::new();
    loop {
        match reader.step(body, at, false)? {
            Step::Part(part, next) => {
                parts.push(part);
                at = next;
            }
            Step::File(filename, data_at) => return Some(Head::File(parts, filename, data_at)),
            Step::Short => return Some(Head::Short),
            Step::Closing => return None,
        }
    }
}

/// What comes next in a body read in place.
enum Step<'a> {
    /// A part whose data ends before the next delimiter, and where the next step reads.
    Part(SimplePart<'a>, usize),
    /// The closing delimiter: what follows is an epilogue, ignored.
    Closing,
    /// (Reading a head only.) The part named `file` with this file name, its data starting
    /// here.
    File(&'a str, usize),
    /// (Reading a head only.) The bytes end before this step can be told.
    Short,
}

struct SimpleReader<'d> {
    /// `\r\n--boundary`.
    delimiter: &'d [u8],
    finder: memchr::memmem::Finder<'d>,
}

impl<'d> SimpleReader<'d> {
    fn new(delimiter: &'d [u8]) -> SimpleReader<'d> {
        let finder = memchr::memmem::Finder::new(delimiter);
        SimpleReader { delimiter, finder }
    }

    /// Where the first step reads, past the opening delimiter (no preamble before it).
    fn opening(&self, body: &[u8]) -> Option<usize> {
        let opening = &self.delimiter[2..];
        body.starts_with(opening).then_some(opening.len())
    }

    /// The step at `at` (just past a delimiter). `whole`: the body is all there; otherwise
    /// only its beginning is, and a file part's data is not looked for.
    fn step<'a>(&self, body: &'a [u8], at: usize, whole: bool) -> Option<Step<'a>> {
        let short = (!whole).then_some(Step::Short);
        let rest = &body[at..];
        if rest.len() < 2 {
            return if rest == b"-" || rest == b"\r" || rest.is_empty() {
                short
            } else {
                None
            };
        }
        if rest.starts_with(b"--") {
            return Some(Step::Closing);
        }
        let head_at = at + 2;
        if !rest.starts_with(b"\r\n") {
            return None;
        }
        match body.get(head_at..head_at + 2) {
            Some(b"\r\n") => return None,
            Some(_) => {}
            None if body.len() == head_at || body[head_at] == b'\r' => return short,
            None => {}
        }
        let window_end = body.len().min(head_at + PART_HEAD_BYTES);
        let window = &body[head_at..window_end];
        let Some(head_len) = find_head_end(window) else {
            // Cut before the head's end (a head longer than the window goes to multer).
            return if window_end < head_at + PART_HEAD_BYTES {
                short
            } else {
                None
            };
        };
        let head = std::str::from_utf8(&body[head_at..head_at + head_len]).ok()?;
        let (name, filename) = form_data_names(head)?;
        let data_at = head_at + head_len + 4;
        if let (false, "file", Some(filename)) = (whole, name, filename) {
            return Some(Step::File(filename, data_at));
        }
        let Some(data_len) = self.finder.find(&body[data_at..]) else {
            return short;
        };
        Some(Step::Part(
            SimplePart {
                name,
                filename,
                data: data_at..data_at + data_len,
            },
            data_at + data_len + self.delimiter.len(),
        ))
    }
}

/// The `name` and `filename` of a part's header lines, when they are as [`simple_parts`]
/// takes them.
fn form_data_names(head: &str) -> Option<(&str, Option<&str>)> {
    // What multer's header parser would refuse or read otherwise (control bytes, a bare line
    // feed, more than 32 lines) goes to it.
    if !head
        .bytes()
        .all(|b| b == b'\t' || b == b'\r' || b == b'\n' || (b >= 0x20 && b != 0x7f))
    {
        return None;
    }
    let mut disposition = None;
    // Lines end with CRLF (the last one without): a CR without its LF, or a bare LF, goes to
    // multer.
    let mut rest = Some(head);
    for n in 0.. {
        let Some(text) = rest else { break };
        let (line, next) = match memchr::memchr(b'\r', text.as_bytes()) {
            Some(cr) if text.as_bytes().get(cr + 1) == Some(&b'\n') => {
                (&text[..cr], Some(&text[cr + 2..]))
            }
            Some(_) => return None,
            None => (text, None),
        };
        rest = next;
        if n >= MAX_PART_HEADERS || memchr::memchr(b'\n', line.as_bytes()).is_some() {
            return None;
        }
        let colon = memchr::memchr(b':', line.as_bytes())?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return None;
        }
        if name.eq_ignore_ascii_case("content-disposition") && disposition.replace(value).is_some()
        {
            return None;
        }
    }
    let mut items = disposition?.split(';');
    if !items.next()?.trim_ascii().eq_ignore_ascii_case("form-data") {
        return None;
    }
    let (mut name, mut filename) = (None, None);
    for item in items {
        let (key, value) = item.trim_ascii().split_once('=')?;
        let value = value.strip_prefix('"')?.strip_suffix('"')?;
        // multer finds `name` and `filename` wherever they follow a space: inside a value too.
        let names_inside = value
            .as_bytes()
            .windows(5)
            .any(|w| w[0].is_ascii_whitespace() && &w[1..] == b"name");
        if memchr::memchr2(b'"', b'\\', value.as_bytes()).is_some() || names_inside {
            return None;
        }
        let slot = match key {
            "name" => &mut name,
            "filename" => &mut filename,
            _ => return None,
        };
        if slot.replace(value).is_some() {
            return None;
        }
    }
    Some((name?, filename))
}

/// The text fields read so far: all together within the limit, and in the memory budget.
#[derive(Default)]
struct TextFields {
    bytes: u64,
}

impl TextFields {
    fn take(
        &mut self,
        name: &str,
        len: usize,
        limits: &BodyLimits,
        form: &mut Form,
    ) -> ApiResult<()> {
        self.bytes += len as u64;
        if self.bytes > limits.max_field_bytes {
            return Err(ApiError::bad(format!(
                "Parameter {name} is too large. Maximum is {} bytes for all parameters.",
                limits.max_field_bytes
            )));
        }
        if let Some(b) = &limits.budget {
            b.take(len, &mut form.budget)?;
        }
        Ok(())
    }
}

/// Adds a text field (a field without a name is dropped).
fn push_text(params: &mut Params, name: &str, value: Vec<u8>) {
    if !name.is_empty() {
        let text = String::from_utf8(value)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        params.push_owned(name, text);
    }
}

/// The fields before the file part, as the whole form will be judged: empty values are absent.
fn fields_so_far(params: &Params) -> std::borrow::Cow<'_, Params> {
    if params.has_empty() {
        let mut p = params.clone();
        p.drop_empty();
        std::borrow::Cow::Owned(p)
    } else {
        std::borrow::Cow::Borrowed(params)
    }
}

/// The first bytes of a body (up to [`BodyHead::MAX`]), shared with the stream that reads it.
#[derive(Clone, Default)]
struct BodyHead(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl BodyHead {
    const MAX: usize = 256 * 1024;

    fn keep(&self, chunk: &[u8]) {
        if let Ok(mut kept) = self.0.lock() {
            let room = Self::MAX.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
        }
    }

    /// Where the data of the part named `file` (with a file name) starts in the body.
    fn file_data_start(&self, boundary: &str) -> Option<u64> {
        let kept = self.0.lock().ok()?;
        file_data_start(&kept, boundary)
    }
}

/// Where the data of the first part named `file` with a file name starts in a multipart body
/// beginning with `body`, if its headers are within it.
fn file_data_start(body: &[u8], boundary: &str) -> Option<u64> {
    let delimiter = format!("--{boundary}\r\n");
    let mut at = 0;
    loop {
        let found = find(&body[at..], delimiter.as_bytes())? + at;
        // A delimiter opens the body or follows a line break.
        if found != 0 && body.get(found.wrapping_sub(2)..found) != Some(b"\r\n".as_slice()) {
            at = found + 1;
            continue;
        }
        let headers_at = found + delimiter.len();
        let end = find_head_end(&body[headers_at..])? + headers_at;
        let headers = std::str::from_utf8(&body[headers_at..end]).ok()?;
        let is_file = headers.split("\r\n").any(|line| {
            let Some((name, value)) = line.split_once(':') else {
                return false;
            };
            if !name.trim().eq_ignore_ascii_case("content-disposition") {
                return false;
            }
            let mut named_file = false;
            let mut has_filename = false;
            for param in value.split(';').skip(1) {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "name" => named_file = v.trim().trim_matches('"') == "file",
                    "filename" => has_filename = true,
                    _ => {}
                }
            }
            named_file && has_filename
        });
        if is_file {
            return Some((end + 4) as u64);
        }
        at = end + 4;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// Where a part's header lines end (`\r\n\r\n`), with a searcher made once.
fn find_head_end(haystack: &[u8]) -> Option<usize> {
    static HEAD_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    HEAD_END.find(haystack)
}

/// A multipart body being parsed, with what is needed to tell its file part's length.
struct Multipart {
    parts: multer::Multipart<'static>,
    boundary: String,
    head: Option<BodyHead>,
}

impl Multipart {
    /// The length of the file part that starts now, if it is the body's last part and the body
    /// ends as the SDKs end theirs (`\r\n--boundary--\r\n`).
    fn file_len(&self, body_length: u64) -> Option<u64> {
        let start = self.head.as_ref()?.file_data_start(&self.boundary)?;
        last_part_len(body_length, start, &self.boundary)
    }
}

/// The length of a body's last part whose data starts at `start`, when the body ends as the
/// SDKs end theirs (`\r\n--boundary--\r\n`).
fn last_part_len(body_length: u64, start: u64, boundary: &str) -> Option<u64> {
    let closing = boundary.len() as u64 + 8;
    body_length.checked_sub(start)?.checked_sub(closing)
}

/// A form being read: what it holds so far, and its parts counted.
#[derive(Default)]
struct Reading {
    form: Form,
    fields: usize,
    text: TextFields,
}

impl Reading {
    /// Counts one more part.
    fn count(&mut self, limits: &BodyLimits) -> ApiResult<()> {
        self.fields += 1;
        if self.fields > limits.max_fields {
            return Err(too_many(limits.max_fields));
        }
        Ok(())
    }
}

/// Where a file part's data comes from.
enum FileSource<'a, 'b> {
    Multer(&'a mut multer::Field<'static>),
    InPlace(&'a mut FileData<'b, axum::body::BodyDataStream>),
}

impl FileSource<'_, '_> {
    async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, multer::Error> {
        match self {
            FileSource::Multer(field) => field.chunk().await,
            FileSource::InPlace(data) => data.chunk().await,
        }
    }
}

async fn parse_multipart(
    mut multipart: Multipart,
    mut reading: Reading,
    tmp_dir: &std::path::Path,
    limits: &BodyLimits,
    bad: &(dyn Fn(multer::Error) -> ApiError + Sync),
) -> ApiResult<Form> {
    while let Some(mut field) = multipart.parts.next_field().await.map_err(bad)? {
        reading.count(limits)?;
        let name = field.name().unwrap_or("").to_string();
        let filename = field.file_name().map(str::to_string);
        match filename {
            Some(filename) if name == "file" => {
                let file_len = limits
                    .mirror
                    .as_ref()
                    .and_then(|m| multipart.file_len(m.body_length()));
                let source = FileSource::Multer(&mut field);
                take_file(
                    &mut reading,
                    &filename,
                    source,
                    file_len,
                    tmp_dir,
                    limits,
                    bad,
                )
                .await?;
            }
            _ => {
                let mut buf: Vec<u8> = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    // All text fields together stay within the limit (they are in memory).
                    reading
                        .text
                        .take(&name, chunk.len(), limits, &mut reading.form)?;
                    buf.extend_from_slice(&chunk);
                }
                push_text(&mut reading.form.params, &name, buf);
            }
        }
    }
    Ok(reading.form)
}

/// Reads the file part (the fields before it checked, and given to the placement and the
/// mirror) into the form. `file_len`: the part's length if it is the body's last part.
async fn take_file(
    reading: &mut Reading,
    filename: &str,
    mut data: FileSource<'_, '_>,
    file_len: Option<u64>,
    tmp_dir: &std::path::Path,
    limits: &BodyLimits,
    bad: &(dyn Fn(multer::Error) -> ApiError + Sync),
) -> ApiResult<()> {
    let form = &mut reading.form;
    let so_far = fields_so_far(&form.params);
    if let Some(check) = &limits.early_check {
        check(&so_far)?;
    }
    let placed = match &limits.placement {
        Some(p) => p.place(&so_far).await,
        None => None,
    };
    let in_place = placed.is_some();
    let mut mirror = match (&limits.mirror, in_place) {
        (Some(m), false) => m.start(&so_far, file_len).await,
        _ => None,
    };
    // A store that answers the MD5 of what it stored spares hashing the file here.
    let store_hashes = mirror.as_ref().is_some_and(|m| m.sink.gives_md5());
    let hashing = if store_hashes {
        Hashing::Off
    } else {
        Hashing::Fresh
    };
    let mut writer = match placed {
        Some(p) => BlobWriter::create_placed(&p.file, p.offset, p.len, p.tap).await?,
        None => BlobWriter::create_with(tmp_dir, limits.max_file_bytes, hashing).await?,
    };
    let mut overflow: Option<u64> = None;
    while let Some(chunk) = data.chunk().await.map_err(bad)? {
        if let Some(total) = overflow.as_mut() {
            // Keep reading to report the size and leave the connection usable, but
            // not forever: past a margin the part is given up on.
            *total += chunk.len() as u64;
            if *total > limits.max_file_bytes.saturating_add(OVERFLOW_DRAIN) {
                break;
            }
            continue;
        }
        let len = chunk.len() as u64;
        let sent = chunk.clone();
        match writer.write(chunk).await {
            Ok(()) => {}
            Err(WriteError::TooLarge { .. }) => {
                overflow = Some(writer.written() + len);
                mirror = None;
                continue;
            }
            Err(WriteError::Io(e)) => return Err(e.into()),
        }
        // The store falling behind slows the body down; failing, it is left out
        // (the finished file is sent as usual).
        if let Some(m) = mirror.as_mut() {
            if let Err(e) = m.sink.write(sent).await {
                tracing::warn!(error = %e, "sending an upload to the store as it arrives failed");
                mirror = None;
            }
        }
    }
    if let Some(total) = overflow {
        if in_place {
            return Err(ApiError::bad(format!(
                "Invalid Content-Range header: the part has {total} bytes, more than its range"
            )));
        }
        return Err(too_large(total, limits.max_file_bytes));
    }
    let mut blob = writer.finish().await?;
    if let Some(Mirror { sink, object, .. }) = mirror {
        match sink.finish().await {
            Ok(md5) => {
                if let (Some(md5), true) = (md5, store_hashes) {
                    blob.md5 = md5;
                }
                blob.stored = Some(object);
            }
            Err(e) => {
                tracing::warn!(error = %e, "completing an upload sent to the store as it arrived failed");
            }
        }
    }
    if store_hashes {
        blob.ensure_md5().await?;
    }
    form.file = Some(FilePart {
        blob,
        filename: filename.to_string(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_from(bytes: impl Into<bytes::Bytes>) -> Body {
        Body::from(bytes.into())
    }

    #[tokio::test]
    async fn json_and_urlencoded_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let limits = BodyLimits {
            max_file_bytes: 100,
            ..limits()
        };
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let body =
            body_from(r#"{"public_ids":["a","b"],"unsigned":true,"transformations":null,"n":3}"#);
        let f = read_form(&h, Some("q=1&n=9"), body, dir.path(), &limits)
            .await
            .unwrap();
        assert_eq!(f.params.items("public_ids"), vec!["a", "b"]);
        assert_eq!(f.params.text("unsigned"), Some("true"));
        assert!(f.params.get("transformations").is_none());
        assert_eq!(f.params.text("n"), Some("3"));
        assert_eq!(f.params.text("q"), Some("1"));
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let f = read_form(
            &h,
            None,
            body_from("a=1+2&b%5B%5D=x&b%5B%5D=y"),
            dir.path(),
            &limits,
        )
        .await
        .unwrap();
        assert_eq!(f.params.text("a"), Some("1 2"));
        assert_eq!(f.params.items("b"), vec!["x", "y"]);
    }

    #[test]
    fn the_file_part_is_found_where_its_data_starts() {
        // As the Python SDK sends it: fields, the file, the closing delimiter.
        let b = "9220cdcb0f682aede2b8e9dacfef4fd3";
        let head = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"timestamp\"\r\n\r\n1\r\n\
             --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.png\"\r\n\
             Content-Type: image/png\r\n\r\n"
        );
        let data = b"\x89PNG--not a delimiter";
        let mut body = head.clone().into_bytes();
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
        assert_eq!(file_data_start(&body, b), Some(head.len() as u64));
        let parsed = Multipart {
            parts: multer::Multipart::new(
                futures_util::stream::empty::<Result<bytes::Bytes, std::io::Error>>(),
                b,
            ),
            boundary: b.to_string(),
            head: Some(BodyHead::default()),
        };
        parsed.head.as_ref().unwrap().keep(&body);
        assert_eq!(parsed.file_len(body.len() as u64), Some(data.len() as u64));
        // A field whose file name is "file", or a file part with no file name, is not it;
        // nor is a delimiter inside a value, nor a body cut before the part's headers end.
        let decoys = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"x\"; filename=\"file\"\r\n\r\n\
             v --{b}\r\n\r\n\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n\
             https://example.com/a.png\r\n--{b}\r\nContent-Disposition: form-data; filename=\"a\"; \
             NAME=file\r\n\r\n"
        );
        assert_eq!(
            file_data_start(decoys.as_bytes(), b),
            Some(decoys.len() as u64)
        );
        assert_eq!(
            file_data_start(&decoys.as_bytes()[..decoys.len() - 3], b),
            None
        );
        assert_eq!(file_data_start(b"no multipart here", b), None);
    }

    fn limits() -> BodyLimits {
        BodyLimits {
            max_file_bytes: 1000,
            max_field_bytes: 1000,
            max_fields: 10,
            idle: std::time::Duration::from_secs(5),
            budget: None,
            placement: None,
            mirror: None,
            early_check: None,
        }
    }

    /// What a form holds, or the error it ended in, for comparing two readings.
    fn outcome(result: ApiResult<Form>) -> String {
        match result {
            Ok(f) => {
                let file = f.file.map(|p| {
                    let bytes = p.blob.bytes().map(|b| b.to_vec());
                    // A body read whole leaves its content's MD5 to be made with its row.
                    let md5 = match (&bytes, p.blob.md5.is_empty()) {
                        (Some(b), true) => hex::encode(crate::storage::md5::Md5::digest(b)),
                        _ => p.blob.md5.clone(),
                    };
                    (p.filename, p.blob.size, md5, bytes)
                });
                format!("{:?} {:?}", f.params, file)
            }
            Err(e) => format!("error {e}"),
        }
    }

    /// `body` sent in pieces of `piece` bytes; then, with `fails_after_ms`, a failure that
    /// much later (once what came before it is read).
    fn sent_in_pieces(body: &[u8], piece: usize, fails_after_ms: Option<u64>) -> Body {
        let pieces: Vec<Result<bytes::Bytes, axum::Error>> = body
            .chunks(piece.max(1))
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let failure = futures_util::stream::iter(fails_after_ms).then(|ms| async move {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            Err(axum::Error::new("cut off"))
        });
        Body::from_stream(futures_util::stream::iter(pieces).chain(failure))
    }

    /// Reads `body` whole (its length given, in one piece) and streamed in pieces of three bytes
    /// (no length).
    async fn both_ways(body: &[u8], limits: &BodyLimits) -> (String, String) {
        read_twice(body, body.len(), false, limits).await
    }

    /// Reads `body` whole (its length given, in pieces of `whole_piece` bytes) and streamed in
    /// pieces of three bytes (no length). With `fails`, the client stalls after the bytes and
    /// the body then fails (an idle deadline, a reset), the length given being beyond them.
    async fn read_twice(
        body: &[u8],
        whole_piece: usize,
        fails: bool,
        limits: &BodyLimits,
    ) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let ct = "multipart/form-data; boundary=XyZ0123";
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        let sent = |piece: usize| sent_in_pieces(body, piece, fails.then_some(30));
        let mut whole = h.clone();
        let length = body.len() + if fails { 10 } else { 0 };
        whole.insert(header::CONTENT_LENGTH, length.into());
        let a = read_form(&whole, None, sent(whole_piece), dir.path(), limits).await;
        let b = read_form(&h, None, sent(3), dir.path(), limits).await;
        (outcome(a), outcome(b))
    }

    #[test]
    fn a_plain_boundary_is_read_as_multer_reads_it() {
        for ct in [
            "multipart/form-data; boundary=XyZ0123",
            "multipart/form-data;boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
            "Multipart/Form-Data; Boundary=--------------------------123456789012",
            "multipart/form-data; boundary=a'b+c_d.e-f",
        ] {
            let ours = plain_boundary(ct).expect(ct);
            assert_eq!(ours, multer::parse_boundary(ct).unwrap(), "{ct}");
        }
        // Anything else is left to multer.
        for ct in [
            "multipart/form-data; boundary=\"quoted\"",
            "multipart/form-data; charset=utf-8; boundary=x",
            "multipart/form-data; boundary=x; charset=utf-8",
            "multipart/mixed; boundary=x",
            "multipart/form-data; boundary=",
            "multipart/form-data",
            "text/plain",
            "",
        ] {
            assert_eq!(plain_boundary(ct), None, "{ct}");
        }
    }

    #[test]
    fn part_heads_written_otherwise_go_to_multer() {
        let taken = form_data_names;
        assert_eq!(
            taken("Content-Disposition: form-data; name=\"a\"\r\nContent-Type: text/plain"),
            Some(("a", None))
        );
        assert_eq!(
            taken("X-A: 1\r\ncontent-disposition: form-data; name=\"f\"; filename=\"x.png\""),
            Some(("f", Some("x.png")))
        );
        for head in [
            // A bare CR or LF, a line without a colon, an empty line, two dispositions.
            "Content-Disposition: form-data; name=\"a\"\rX: 1",
            "Content-Disposition: form-data; name=\"a\"\nX: 1",
            "Content-Disposition: form-data; name=\"a\"\r",
            "Content-Disposition: form-data; name=\"a\"\r\nno colon",
            "Content-Disposition: form-data; name=\"a\"\r\n",
            "Content-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"b\"",
            // Quotes or backslashes inside a value, an unknown item.
            "Content-Disposition: form-data; name=\"a\\b\"",
            "Content-Disposition: form-data; name=\"a\"; size=\"3\"",
        ] {
            assert_eq!(taken(head), None, "{head:?}");
        }
    }

    #[test]
    fn usual_parts_are_taken_in_place() {
        let b = "XyZ0123";
        let body = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"timestamp\"\r\n\r\n1\r\n\
             --{b}\r\ncontent-disposition: Form-Data; name=\"file\"; filename=\"s.png\"\r\n\
             Content-Type: image/png\r\n\r\nA\r\n-{b}\r\n--{b}--\r\nepilogue"
        );
        let parts = simple_parts(body.as_bytes(), b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].name, parts[0].filename), ("timestamp", None));
        assert_eq!(&body[parts[0].data.clone()], "1");
        assert_eq!((parts[1].name, parts[1].filename), ("file", Some("s.png")));
        assert_eq!(&body[parts[1].data.clone()], format!("A\r\n-{b}"));
        assert_eq!(simple_parts(format!("--{b}--").as_bytes(), b), Some(vec![]));
    }

    /// Bodies written the usual way and otherwise, for reading both ways.
    fn sample_bodies() -> Vec<Vec<u8>> {
        let b = "XyZ0123";
        let part =
            |cd: &str, data: &str| format!("--{b}\r\nContent-Disposition: {cd}\r\n\r\n{data}\r\n");
        let end = format!("--{b}--\r\n");
        let file = part(
            "form-data; name=\"file\"; filename=\"a.png\"",
            "\u{89}PNG data",
        );
        vec![
            // The usual ones.
            format!("{}{}{file}{end}", part("form-data; name=\"a\"", "1"), part("form-data; name=\"b\"", "")).into(),
            format!("{}{end}", part("form-data; name=\"tags[]\"", "x")).into(),
            format!("{file}{file}{end}").into(),
            format!("{}{end}", part("form-data; name=\"\"", "nameless")).into(),
            format!("{}{end}", part("form-data; name=\"x\"; filename=\"\"", "named file")).into(),
            format!("{}{end}", part("form-data; name=\"file\"; filename=\"\"", "")).into(),
            end.clone().into(),
            // Odd ones (multer reads them).
            format!("preamble\r\n{file}{end}").into(),
            format!("{}{end}", part("form-data; name=a", "unquoted")).into(),
            format!("{}{end}", part("form-data; name=\"file\"; filename=\"a;b.png\"", "x")).into(),
            format!("{}{end}", part("form-data; name=\"q\\\"x\"", "escaped")).into(),
            format!("{}{end}", part("form-data; name=\"f\"; filename*=utf-8''%C3%A9", "x")).into(),
            format!("{}{end}", part("attachment; name=\"a\"", "not form-data")).into(),
            format!("--{b}  \r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n{end}").into(),
            format!("--{b}\r\n\r\nno headers\r\n{end}").into(),
            format!("--{b}\r\nContent-Disposition: form-data; name=\"a\"\r\n folded\r\n\r\n1\r\n{end}").into(),
            format!("--{b}\r\nBad Header: x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n{end}").into(),
            part("form-data; name=\"a\"", "no closing").into(),
            format!("{}{end}", part("form-data; name=\"a\"", &format!("x\r\n--{b}x"))).into(),
            format!("{}--{b}", part("form-data; name=\"a\"", "1")).into(),
            b"not multipart at all".to_vec(),
            // What multer's header parser refuses or reads otherwise.
            format!("--{b}\r\n{}Content-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n{end}", "X-A: 1\r\n".repeat(32)).into(),
            format!("--{b}\r\n{}Content-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n{end}", "X-A: 1\r\n".repeat(31)).into(),
            format!("{}{end}", part("form-data; name=\"a\u{1}\"", "control")).into(),
            format!("{}{end}", part("form-data; name=\"file\"; filename=\"f\u{7f}.png\"", "x")).into(),
            format!("--{b}\r\nContent-Disposition: form-data; name=\"note\"\r\nX-A: 1\nContent-Disposition: form-data; name=\"file\"; filename=\"f.png\"\r\n\r\nx\r\n{end}").into(),
            format!("--{b}\r\nX-A: 1\n\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.png\"\r\n\r\nx\r\n{end}").into(),
            format!("{}{end}", part("form-data;\u{a0}name=\"file\"; filename=\"f\"", "nbsp")).into(),
            format!("{}{end}", part("form-data; filename=\"my name.png\"; name=\"file\"", "x")).into(),
            format!("{}{end}", part("form-data; filename=\"a name=file b\"; name=\"x\"", "x")).into(),
            format!("{}{end}", part("form-data; name=\"file\"; filename=\"my photo.png\"", "x")).into(),
            format!("{}{end}", part("form-data;name=\"display_name\"", "x")).into(),
            {
                let mut v = format!("--{b}\r\nContent-Disposition: form-data; name=\"bin\"\r\n\r\n").into_bytes();
                v.extend_from_slice(b"\xff\xfe text\r\n");
                v.extend_from_slice(end.as_bytes());
                v
            },
        ]
    }

    /// Reads `body` streamed in pieces of `piece` bytes, the file part in place or all through
    /// multer. With `fails`, the body then fails.
    async fn streamed(
        body: &[u8],
        piece: usize,
        fails: bool,
        in_place: bool,
        limits: &BodyLimits,
    ) -> String {
        let dir = tempfile::tempdir().unwrap();
        let body = sent_in_pieces(body, piece, fails.then_some(5));
        let ct = "multipart/form-data; boundary=XyZ0123";
        outcome(read_multipart_as(ct, body, dir.path(), limits, None, in_place).await)
    }

    /// Whatever the body and however it arrives, taking its file part in place reads it as
    /// multer does.
    #[tokio::test]
    async fn a_file_part_taken_in_place_reads_as_multer_reads_it() {
        let b = "XyZ0123";
        let part =
            |cd: &str, data: &str| format!("--{b}\r\nContent-Disposition: {cd}\r\n\r\n{data}\r\n");
        let file = |data: &str| part("form-data; name=\"file\"; filename=\"a.png\"", data);
        let field = part("form-data; name=\"timestamp\"", "1");
        let end = format!("--{b}--\r\n");
        let mut bodies = sample_bodies();
        for data in [
            "",
            "\r",
            "\r\n",
            "\r\n--XyZ012",
            "a\r\n--XyZ012\r\n-\r\r\n--",
            "\r\n-XyZ0123\r\n--XyZ01234",
            "x\r\n--XyZ0123x",
            "x\r\n--XyZ0123--",
            "x\r\n--XyZ0123  \r\nContent-Disposition: form-data; name=\"late\"\r\n\r\n2",
        ] {
            bodies.push(format!("{field}{}{end}", file(data)).into());
            bodies.push(format!("{}{field}{end}epilogue", file(data)).into());
            bodies.push(format!("{field}{}{}{end}", file(data), file("second")).into());
            bodies.push(format!("{field}{}", file(data)).into());
            bodies.push(format!("{field}{}--{b}-", file(data)).into());
        }
        let complete = format!("{field}{}{end}", file("some \r\n-- data"));
        for cut in [
            0,
            3,
            20,
            field.len() + 30,
            complete.len() - 12,
            complete.len() - 3,
        ] {
            bodies.push(complete.as_bytes()[..cut].to_vec());
        }
        let mut long = field.clone().into_bytes();
        long.extend_from_slice(
            b"--XyZ0123\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big\"\r\n\r\n",
        );
        for i in 0..40_000u32 {
            long.extend_from_slice(if i % 7 == 0 {
                b"\r\n--XyZ01"
            } else {
                b"\r\r\n-x"
            });
        }
        long.extend_from_slice(format!("\r\n{end}").as_bytes());
        bodies.push(long);
        let mut limits = limits();
        for max_file in [1000, 1 << 20] {
            limits.max_file_bytes = max_file;
            for body in &bodies {
                let sizes: &[usize] = if body.len() > 10_000 {
                    &[4093, 65536]
                } else {
                    &[1, 2, 3, 5, 8, 13, 64, 100_000]
                };
                for &piece in sizes {
                    // (A body that fails is read in fewer ways: each waits for its failure.)
                    let failing = body.len() < 10_000 && (piece == 3 || piece == 100_000);
                    for fails in [false, failing] {
                        let ours = streamed(body, piece, fails, true, &limits).await;
                        let multer = streamed(body, piece, fails, false, &limits).await;
                        let shown = String::from_utf8_lossy(&body[..body.len().min(400)]);
                        let context = format!("{piece}-byte pieces, fails: {fails}: {shown}");
                        // A body that fails is read as a body read whole is: the form it
                        // held before the failure (as if it had not failed), else an error.
                        // multer reads ahead as far as the body lets it, the failure included,
                        // so it may meet the failure first (however the machine runs the
                        // test), or tell what it found wrong first; it gives no other form.
                        if !fails {
                            assert_eq!(ours, multer, "{context}");
                        } else if ours.starts_with("error") {
                            assert!(multer.starts_with("error"), "{context}: {multer}");
                        } else {
                            let whole = streamed(body, piece, false, true, &limits).await;
                            assert_eq!(ours, whole, "{context}");
                            let failed = "error Invalid multipart body: failed to read stream";
                            assert!(multer == ours || multer == failed, "{context}: {multer}");
                        }
                    }
                }
            }
        }
    }

    /// Whatever the body, reading it whole gives what multer gives reading it streamed.
    #[tokio::test]
    async fn a_body_read_whole_reads_as_it_does_streamed() {
        let b = "XyZ0123";
        let part =
            |cd: &str, data: &str| format!("--{b}\r\nContent-Disposition: {cd}\r\n\r\n{data}\r\n");
        let end = format!("--{b}--\r\n");
        let file = part(
            "form-data; name=\"file\"; filename=\"a.png\"",
            "\u{89}PNG data",
        );
        let bodies = sample_bodies();
        let limits = limits();
        for body in &bodies {
            let (whole, streamed) = both_ways(body, &limits).await;
            assert_eq!(whole, streamed, "{}", String::from_utf8_lossy(body));
        }
        // The limits hold either way.
        let many: String = (0..11)
            .map(|i| part(&format!("form-data; name=\"f{i}\""), "v"))
            .collect();
        let big_field = part("form-data; name=\"big\"", &"x".repeat(1001));
        let big_file = part(
            "form-data; name=\"file\"; filename=\"a\"",
            &"x".repeat(1001),
        );
        for body in [many, big_field, big_file] {
            let body = format!("{body}{end}");
            let (whole, streamed) = both_ways(body.as_bytes(), &limits).await;
            assert!(whole.starts_with("error "), "{whole}");
            assert_eq!(whole, streamed);
        }
        // A body that fails to arrive reads as it does streamed, the failure coming after what
        // came before it: a form complete before the failure is taken, a refusal of the
        // fields before the file part is given, anything else is the failure.
        let complete = format!("{}{file}{end}", part("form-data; name=\"a\"", "1"));
        for cut in [complete.len(), complete.len() - 4, 10, 0] {
            let (whole, streamed) =
                read_twice(&complete.as_bytes()[..cut], 100, true, &limits).await;
            assert_eq!(whole, streamed, "cut at {cut}");
            if cut == complete.len() {
                assert!(!whole.starts_with("error"), "{whole}");
            } else {
                assert!(whole.starts_with("error"), "{whole}");
            }
        }
        // The fields before the file part are checked when it starts.
        let mut checked = limits.clone();
        checked.early_check = Some(std::sync::Arc::new(|p: &Params| match p.text("a") {
            Some("1") => Err(ApiError::bad("refused early")),
            _ => Ok(()),
        }));
        let body = format!(
            "{}{}{file}{end}",
            part("form-data; name=\"a\"", "1"),
            part("form-data; name=\"b\"", "")
        );
        let (whole, streamed) = both_ways(body.as_bytes(), &checked).await;
        assert_eq!(whole, "error refused early");
        assert_eq!(whole, streamed);
        let (whole, streamed) =
            read_twice(&body.as_bytes()[..body.len() - 20], 100, true, &checked).await;
        assert_eq!(whole, "error refused early");
        assert_eq!(whole, streamed);
    }
}
