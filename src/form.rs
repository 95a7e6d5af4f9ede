//! Request parameters as received, kept as the exact received text (signatures are computed
//! over it), and the file part of a request.

use crate::error::{ApiError, ApiResult};
use crate::storage::TempBlob;
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    List(Vec<String>),
}

/// Ordered parameters; a name ending in `[]` or `[<digits>]`, or repeated, is a list.
#[derive(Debug, Clone, Default)]
pub struct Params {
    entries: Vec<(String, Value)>,
    /// Where each name is in `entries`, kept once there are more than [`SCANNED_UP_TO`]
    /// (lookups stay O(1) however many fields come); empty below that.
    index: std::collections::HashMap<String, usize>,
}

/// Parameters found by a scan of `entries` at most: the common call has a dozen, which a scan
/// finds faster than a hash map is kept.
const SCANNED_UP_TO: usize = 16;

/// Splits `name[]` / `name[3]` into (`name`, true).
pub(crate) fn base_name(raw: &str) -> (&str, bool) {
    if let Some(stripped) = raw.strip_suffix(']') {
        if let Some(open) = stripped.rfind('[') {
            let inner = &stripped[open + 1..];
            if inner.chars().all(|c| c.is_ascii_digit()) {
                return (&stripped[..open], true);
            }
        }
    }
    (raw, false)
}

impl Params {
    /// Adds a received `name=value` pair.
    pub fn push(&mut self, raw_name: &str, value: &str) {
        self.push_owned(raw_name, value.to_string());
    }

    /// [`Params::push`] with a value already owned (not copied again).
    pub fn push_owned(&mut self, raw_name: &str, value: String) {
        // Control characters never belong in a name (internal markers start with NUL), nor
        // `=` or `&` (a name with them would sign like another parameter).
        if raw_name
            .chars()
            .any(|c| c.is_control() || c == '=' || c == '&')
        {
            return;
        }
        let (name, is_list) = base_name(raw_name);
        if let Some(i) = self.position(name) {
            let existing = &mut self.entries[i].1;
            match existing {
                Value::List(items) => items.push(value),
                Value::Text(t) => {
                    let first = std::mem::take(t);
                    *existing = Value::List(vec![first, value]);
                }
            }
            return;
        }
        let v = if is_list {
            Value::List(vec![value])
        } else {
            Value::Text(value)
        };
        self.append(name.to_string(), v);
    }

    fn append(&mut self, name: String, value: Value) {
        if !self.index.is_empty() {
            self.index.insert(name.clone(), self.entries.len());
        }
        self.entries.push((name, value));
        if self.index.is_empty() && self.entries.len() > SCANNED_UP_TO {
            self.reindex();
        }
    }

    fn reindex(&mut self) {
        self.index = if self.entries.len() > SCANNED_UP_TO {
            self.entries
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (n.clone(), i))
                .collect()
        } else {
            Default::default()
        };
    }

    fn position(&self, name: &str) -> Option<usize> {
        if self.index.is_empty() {
            self.entries.iter().position(|(n, _)| n == name)
        } else {
            self.index.get(name).copied()
        }
    }

    /// How many distinct parameters there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets a parameter, replacing any received value.
    pub fn set(&mut self, name: &str, value: Value) {
        self.remove(name);
        self.append(name.to_string(), value);
    }

    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let pos = self.position(name)?;
        let removed = self.entries.remove(pos).1;
        self.reindex();
        Some(removed)
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.position(name).map(|i| &self.entries[i].1)
    }

    /// The text of a scalar parameter (a list gives its items joined with `,`).
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            Value::Text(t) => Some(t.as_str()),
            Value::List(items) => items.first().map(|s| s.as_str()),
        }
    }

    /// A non-empty scalar value, trimmed.
    pub fn nonempty(&self, name: &str) -> Option<&str> {
        self.text(name).map(str::trim).filter(|s| !s.is_empty())
    }

    /// A non-empty scalar value, trimmed; without one, the "Missing required parameter" error.
    pub fn required(&self, name: &str) -> ApiResult<&str> {
        self.nonempty(name).ok_or_else(|| ApiError::missing(name))
    }

    /// The received items of a list parameter (a scalar gives one item).
    pub fn items(&self, name: &str) -> Vec<String> {
        match self.get(name) {
            Some(Value::Text(t)) => vec![t.clone()],
            Some(Value::List(items)) => items.clone(),
            None => Vec::new(),
        }
    }

    /// A boolean parameter; `Err` when the value is not a boolean.
    pub fn flag(&self, name: &str) -> ApiResult<Option<bool>> {
        match self.text(name) {
            None => Ok(None),
            Some(v) => crate::util::parse_bool(v).map(Some).ok_or_else(|| {
                ApiError::bad(format!(
                    "Invalid value for {name} - {v} (expected a boolean)"
                ))
            }),
        }
    }

    /// Whether a boolean-ish parameter is set to a true value (unknown text counts as true).
    pub fn truthy(&self, name: &str) -> bool {
        match self.text(name) {
            None => false,
            Some(v) => crate::util::parse_bool(v).unwrap_or(true),
        }
    }

    /// The parameters in received order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, value)` pairs for the string to sign: lists joined with `,` in received order
    /// (the only values not borrowed).
    pub fn signable(&self, exclude: &[&str]) -> Vec<(&str, std::borrow::Cow<'_, str>)> {
        self.entries
            .iter()
            .filter(|(n, _)| !exclude.contains(&n.as_str()))
            .map(|(n, v)| {
                let text = match v {
                    Value::Text(t) => std::borrow::Cow::Borrowed(t.as_str()),
                    Value::List(items) => std::borrow::Cow::Owned(items.join(",")),
                };
                (n.as_str(), text)
            })
            .collect()
    }

    /// Forgets empty values (and empty list items): an empty value is never signed, so it must
    /// mean "absent" (Upload API calls).
    pub fn drop_empty(&mut self) {
        let before = self.entries.len();
        self.entries.retain_mut(|(_, v)| match v {
            Value::Text(t) => !t.is_empty(),
            Value::List(items) => {
                items.retain(|i| !i.is_empty());
                !items.is_empty()
            }
        });
        if self.entries.len() != before {
            self.reindex();
        }
    }

    /// Whether [`drop_empty`](Params::drop_empty) would change anything.
    pub fn has_empty(&self) -> bool {
        self.entries.iter().any(|(_, v)| match v {
            Value::Text(t) => t.is_empty(),
            Value::List(items) => items.is_empty() || items.iter().any(|i| i.is_empty()),
        })
    }

    /// Adds every parameter of `other` that this set does not have.
    pub fn merge_missing(&mut self, other: Params) {
        for (name, value) in other.entries {
            if self.get(&name).is_none() {
                self.append(name, value);
            }
        }
    }
}

/// A file part received in a multipart body.
#[derive(Debug)]
pub struct FilePart {
    pub blob: TempBlob,
    /// The `filename` of the part as sent (Python sends the path as given).
    pub filename: String,
}

/// Everything a request carried.
#[derive(Debug, Default)]
pub struct Form {
    pub params: Params,
    pub file: Option<FilePart>,
    /// The body as sent when it was a JSON object (nested values intact).
    pub json: Option<serde_json::Value>,
    /// The room the form's text takes in the shared memory budget, released with it.
    pub budget: Vec<tokio::sync::OwnedSemaphorePermit>,
}

/// Where a file part is written in place: `len` bytes at `offset` of `file`, each chunk also
/// given to `tap`.
pub struct Placed {
    pub file: std::path::PathBuf,
    pub offset: u64,
    pub len: u64,
    pub tap: Option<crate::storage::temp::Tap>,
}

/// Chooses, when a multipart file part starts, a place to write it directly, or `None` for an
/// ordinary (hashed, staged) body.
#[async_trait::async_trait]
pub trait FilePlacement: Send + Sync {
    async fn place(&self, fields_so_far: &Params) -> Option<Placed>;
}

/// A whole file part sent on to the blob store while it arrives (beside its temporary file):
/// the sink, and the object it makes once finished.
pub struct Mirror {
    pub sink: Box<dyn crate::storage::BlobSink>,
    pub object: crate::storage::StoredObject,
    /// The sink's buffers' room in the shared memory budget, held while it sends.
    pub budget: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// Counted among the bodies sent as they arrive while the mirror lives.
    pub streaming: crate::storage::StreamingBody,
}

/// Chooses, when a multipart file part starts, whether it is also sent to the blob store as
/// it arrives (when the fields before it authenticate it), or `None`.
#[async_trait::async_trait]
pub trait FileMirror: Send + Sync {
    /// The request body's stated length.
    fn body_length(&self) -> u64;
    /// `file_len` is the part's length if it is the body's last part (what the body's length
    /// says, from where the part's bytes start): a sink given another number of bytes fails,
    /// and the finished file is then stored as usual.
    async fn start(&self, fields_so_far: &Params, file_len: Option<u64>) -> Option<Mirror>;
}

/// Bytes of request text held in memory by all requests together (a permit a byte, at most
/// 4 GiB).
#[derive(Clone)]
pub struct MemoryBudget(std::sync::Arc<tokio::sync::Semaphore>);

impl MemoryBudget {
    pub fn new(bytes: u64) -> MemoryBudget {
        let max = (tokio::sync::Semaphore::MAX_PERMITS as u64).min(u64::from(u32::MAX));
        let permits = bytes.clamp(1, max);
        MemoryBudget(std::sync::Arc::new(tokio::sync::Semaphore::new(
            permits as usize,
        )))
    }

    /// Takes room for `bytes` more, or refuses at once (the server is holding too much).
    pub(crate) fn take(
        &self,
        bytes: usize,
        held: &mut Vec<tokio::sync::OwnedSemaphorePermit>,
    ) -> ApiResult<()> {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        match self.0.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                held.push(p);
                Ok(())
            }
            Err(_) => Err(ApiError::RateLimited(
                "The server is holding too much request data: retry later".into(),
            )),
        }
    }
}

/// Parses the query string into parameters.
pub fn parse_query(query: Option<&str>) -> Params {
    let mut params = Params::default();
    if let Some(q) = query {
        if let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(q) {
            for (k, v) in pairs {
                params.push(&k, &v);
            }
        }
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_agree_below_and_above_the_scanned_size() {
        let mut p = Params::default();
        for i in 0..40 {
            p.push(&format!("p{i}"), if i % 3 == 0 { "" } else { "v" });
            for j in 0..=i {
                assert!(p.get(&format!("p{j}")).is_some(), "p{j} after p{i}");
            }
            assert!(p.get("absent").is_none());
        }
        p.push("p5", "again");
        assert_eq!(p.items("p5"), vec!["v", "again"]);
        assert!(p.has_empty());
        p.drop_empty();
        assert!(!p.has_empty());
        assert_eq!(p.len(), 26);
        assert!(p.get("p3").is_none() && p.text("p4") == Some("v"));
        while p.len() > 3 {
            let name = p.names().next().unwrap().to_string();
            assert!(p.remove(&name).is_some());
            assert!(p.get(&name).is_none());
            let last = p.names().last().unwrap().to_string();
            assert!(p.get(&last).is_some());
        }
        p.set("p39", Value::Text("w".into()));
        assert_eq!(p.text("p39"), Some("w"));
    }

    #[test]
    fn lists_and_signing_pairs() {
        let mut p = Params::default();
        p.push("public_ids[]", "a");
        p.push("public_ids[]", "b/c");
        p.push("tag", "t1");
        p.push("x[0]", "1");
        p.push("x[1]", "2");
        p.push("dup", "1");
        p.push("dup", "2");
        assert_eq!(p.items("public_ids"), vec!["a", "b/c"]);
        assert_eq!(p.items("x"), vec!["1", "2"]);
        assert_eq!(p.items("dup"), vec!["1", "2"]);
        let s = p.signable(&["tag"]);
        assert_eq!((s[0].0, s[0].1.as_ref()), ("public_ids", "a,b/c"));
        assert!(p.flag("tag").is_err());
    }
}
