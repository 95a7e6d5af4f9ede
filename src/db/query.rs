//! Asset queries the database answers itself: a filter over an asset's columns and tags, a
//! sort order, and a keyset position, so that searching a catalogue of millions reads only
//! what a page needs (the Search API compiles its expressions into these).

/// A text column of an asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextCol {
    PublicId,
    AssetId,
    DisplayName,
    AssetFolder,
    ResourceType,
    DeliveryType,
    /// The format, `''` when there is none.
    Format,
    Etag,
    /// The `context` map's JSON text (only for containment tests).
    ContextJson,
    /// The `metadata` map's JSON text (only for containment tests).
    MetadataJson,
    /// The `extra` fields' JSON text (only for containment tests).
    ExtraJson,
}

/// A number computed from an asset's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumExpr {
    Bytes,
    Width,
    Height,
    Pages,
    Version,
    CreatedAt,
    /// `width × height`; none when either is missing.
    Pixels,
    /// `width ÷ height`; none when either is missing or the height is 0.
    AspectRatio,
}

/// A comparison with a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// Equal within 1e-9.
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One condition on an asset. Text comparisons are by code point, as in Rust.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// The number exists and compares so with `value`.
    Num { expr: NumExpr, cmp: Cmp, value: f64 },
    /// The column equals `value` (starts with it when `prefix`); with `fold`, after lowering
    /// ASCII letters of the column (`value` is given lowered).
    Text {
        col: TextCol,
        value: String,
        prefix: bool,
        fold: bool,
    },
    /// The column contains `value` (given lowered) with its ASCII letters in any case (or
    /// more: this condition only ever selects candidates that are checked afterwards).
    Contains { col: TextCol, value: String },
    /// One of the columns contains `value`, as [`Cond::Contains`]: the columns are tested
    /// joined into one text (which an index of words can serve), so a match may also span
    /// two of them; candidates only, as above.
    ContainsAny { cols: Vec<TextCol>, value: String },
    /// A tag equals `value` (starts with it when `prefix`).
    Tag { value: String, prefix: bool },
    /// A tag is one of these.
    TagIn(Vec<String>),
    /// A tag contains `value` (given lowered) in any case, as [`Cond::Contains`].
    TagContains(String),
}

/// A boolean combination of conditions.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Cond(Cond),
    Const(bool),
}

impl Filter {
    /// `a AND b`, simplified where a side is constant.
    pub fn and(parts: Vec<Filter>) -> Filter {
        let mut keep = Vec::new();
        for p in parts {
            match p {
                Filter::Const(true) => {}
                Filter::Const(false) => return Filter::Const(false),
                other => keep.push(other),
            }
        }
        match keep.len() {
            0 => Filter::Const(true),
            1 => keep.remove(0),
            _ => Filter::All(keep),
        }
    }

    /// `a OR b`, simplified where a side is constant.
    pub fn or(parts: Vec<Filter>) -> Filter {
        let mut keep = Vec::new();
        for p in parts {
            match p {
                Filter::Const(false) => {}
                Filter::Const(true) => return Filter::Const(true),
                other => keep.push(other),
            }
        }
        match keep.len() {
            0 => Filter::Const(false),
            1 => keep.remove(0),
            _ => Filter::Any(keep),
        }
    }

    pub fn negate(inner: Filter) -> Filter {
        match inner {
            Filter::Const(b) => Filter::Const(!b),
            other => Filter::Not(Box::new(other)),
        }
    }
}

/// What an asset is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortExpr {
    Text(TextCol),
    /// Missing numbers sort as -1.
    Num(NumExpr),
}

/// A value of a sort key (of the last asset of a page).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SortValue {
    Num(f64),
    Text(String),
}

/// Assets of a cloud matching `filter`, sorted by `sort` (each ascending when true) and then
/// by asset ID descending, after the position `after` (the sort values and asset ID of the
/// previous page's last asset), `limit` of them.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub cloud: String,
    pub filter: Filter,
    pub sort: Vec<(SortExpr, bool)>,
    pub after: Option<(Vec<SortValue>, String)>,
    pub limit: i64,
}

/// A column an aggregation counts the values of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggField {
    ResourceType,
    DeliveryType,
    Format,
    AssetFolder,
    Tags,
}
