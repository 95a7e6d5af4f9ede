//! Search expressions compiled into database filters.
//!
//! Each term becomes SQL that selects exactly its matches where the column semantics allow
//! (numbers, times, exact text, folders, tags, single-word fields such as `format`), or a
//! wider filter where they do not (word matches inside public IDs, context values, …); then
//! the plan is marked inexact and the search checks each candidate against the expression.
//! Either way the database narrows the scan with its indexes.

use crate::db::query::{Cmp, Cond, Filter, NumExpr, SortExpr, TextCol};

use super::expression::{self, Expr, Op, Term};

/// At most this many distinct tags are matched word by word in memory (beyond it, a `tags:`
/// term selects candidates by containment instead).
pub const TAG_LIST_LIMIT: i64 = 10_000;
/// Tags of one `tags:` term given to the database as a list at most.
const TAG_IN_LIMIT: usize = 1_000;

/// A compiled expression: the filter, and whether it selects exactly the matches.
pub struct Plan {
    pub filter: Filter,
    pub exact: bool,
}

/// Tags given to the database as lists, over all the terms of one expression, at most.
const TAG_IN_TOTAL: usize = 5_000;
/// Tag comparisons (terms × distinct tags) one expression may cost at most.
const TAG_MATCH_WORK: usize = 200_000;

/// What compiling needs to know: the time that relative ages count from, and the distinct
/// tags (when the expression matches tags by word and they were few enough to list). The
/// work of matching tags in memory, and the statement's size, are bounded per expression:
/// past the bounds, `tags:` terms select candidates by containment instead.
pub struct Compiler<'a> {
    now: i64,
    tags: Option<&'a [String]>,
    tag_in_left: std::cell::Cell<usize>,
    match_work_left: std::cell::Cell<usize>,
}

impl<'a> Compiler<'a> {
    pub fn new(now: i64, tags: Option<&'a [String]>) -> Compiler<'a> {
        Compiler {
            now,
            tags,
            tag_in_left: std::cell::Cell::new(TAG_IN_TOTAL),
            match_work_left: std::cell::Cell::new(TAG_MATCH_WORK),
        }
    }
}

/// Whether an expression has a term that matches tags word by word (and so wants the list).
pub fn wants_tag_list(e: &Expr) -> bool {
    match e {
        Expr::And(p) | Expr::Or(p) => p.iter().any(wants_tag_list),
        Expr::Not(inner) => wants_tag_list(inner),
        Expr::Term(t) => match t.field.as_deref() {
            None => true,
            Some("tags" | "tag") => t.op != Op::Exact,
            _ => false,
        },
    }
}

/// The SQL order of a `sort_by` field; none for one computed outside the database.
pub fn sort_expr(field: &str) -> Option<SortExpr> {
    Some(match field {
        "public_id" => SortExpr::Text(TextCol::PublicId),
        "asset_id" => SortExpr::Text(TextCol::AssetId),
        "display_name" => SortExpr::Text(TextCol::DisplayName),
        "folder" | "asset_folder" => SortExpr::Text(TextCol::AssetFolder),
        "resource_type" => SortExpr::Text(TextCol::ResourceType),
        "type" => SortExpr::Text(TextCol::DeliveryType),
        "format" => SortExpr::Text(TextCol::Format),
        "bytes" => SortExpr::Num(NumExpr::Bytes),
        "width" => SortExpr::Num(NumExpr::Width),
        "height" => SortExpr::Num(NumExpr::Height),
        "pixels" => SortExpr::Num(NumExpr::Pixels),
        "aspect_ratio" => SortExpr::Num(NumExpr::AspectRatio),
        "pages" => SortExpr::Num(NumExpr::Pages),
        "version" => SortExpr::Num(NumExpr::Version),
        "filename" => return None,
        // score, created_at, uploaded_at, last_updated
        _ => SortExpr::Num(NumExpr::CreatedAt),
    })
}

fn exact(filter: Filter) -> Plan {
    Plan {
        filter,
        exact: true,
    }
}

fn wider(filter: Filter) -> Plan {
    Plan {
        filter,
        exact: false,
    }
}

/// Every asset qualifies as a candidate.
fn anything() -> Plan {
    wider(Filter::Const(true))
}

/// Lowered text safe inside a LIKE over JSON text: ASCII without what JSON escapes.
pub(crate) fn json_safe(v: &str) -> bool {
    v.is_ascii()
        && !v
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_ascii_control())
}

/// A value's characters are all letters or digits: a single word.
fn one_word(v: &str) -> bool {
    !v.is_empty() && v.chars().all(char::is_alphanumeric)
}

impl Compiler<'_> {
    pub fn compile(&self, e: &Expr) -> Result<Plan, String> {
        Ok(match e {
            // Both keep exactness only when every part is exact (a wider part makes the
            // whole wider, in a conjunction as in a disjunction).
            Expr::And(parts) => self.combine(parts, Filter::and)?,
            Expr::Or(parts) => self.combine(parts, Filter::or)?,
            Expr::Not(inner) => {
                let p = self.compile(inner)?;
                if p.exact {
                    exact(Filter::negate(p.filter))
                } else {
                    // The complement of a wider set is not wider than the complement.
                    anything()
                }
            }
            Expr::Term(t) => self.term(t)?,
        })
    }

    /// The parts compiled and joined by `join`.
    fn combine(&self, parts: &[Expr], join: fn(Vec<Filter>) -> Filter) -> Result<Plan, String> {
        let plans = parts
            .iter()
            .map(|p| self.compile(p))
            .collect::<Result<Vec<_>, _>>()?;
        let exact = plans.iter().all(|p| p.exact);
        Ok(Plan {
            filter: join(plans.into_iter().map(|p| p.filter).collect()),
            exact,
        })
    }

    fn term(&self, t: &Term) -> Result<Plan, String> {
        let Some(name) = t.field.as_deref() else {
            return Ok(self.free_text(t));
        };
        let col = |c: TextCol| Some(c);
        let text_col = match name {
            "public_id" => col(TextCol::PublicId),
            "asset_id" => col(TextCol::AssetId),
            "display_name" => col(TextCol::DisplayName),
            "folder" | "asset_folder" => col(TextCol::AssetFolder),
            "resource_type" => col(TextCol::ResourceType),
            "type" => col(TextCol::DeliveryType),
            "format" => col(TextCol::Format),
            "etag" => col(TextCol::Etag),
            _ => None,
        };
        if let Some(c) = text_col {
            if matches!(c, TextCol::AssetFolder) && t.op == Op::Match && !t.prefix {
                // One folder, ASCII letters in any case.
                return Ok(exact(text(
                    c,
                    t.value.trim_end_matches('/').to_ascii_lowercase(),
                    false,
                    true,
                )));
            }
            return Ok(text_term(c, t));
        }
        let num = |n: NumExpr| Some(n);
        let number = match name {
            "bytes" => num(NumExpr::Bytes),
            "width" => num(NumExpr::Width),
            "height" => num(NumExpr::Height),
            "pages" => num(NumExpr::Pages),
            "version" => num(NumExpr::Version),
            "pixels" => num(NumExpr::Pixels),
            "aspect_ratio" => num(NumExpr::AspectRatio),
            _ => None,
        };
        if let Some(n) = number {
            return number_term(n, t, expression::parse_number).map(exact);
        }
        match name {
            "created_at" | "uploaded_at" | "last_updated" => {
                let now = self.now;
                number_term(NumExpr::CreatedAt, t, |v| expression::parse_time(v, now)).map(exact)
            }
            "status" => Ok(exact(Filter::Const(expression::text_match(
                "active", t, false,
            )))),
            "tags" | "tag" => Ok(self.tags(t, false)),
            "filename" => Ok(contains(TextCol::PublicId, t)),
            "context" | "context_values" => Ok(contains(TextCol::ContextJson, t)),
            "metadata" => Ok(contains(TextCol::MetadataJson, t)),
            "access_mode" | "duration" => Ok(anything()),
            other => {
                if other
                    .strip_prefix("context.")
                    .is_some_and(|k| !k.is_empty())
                {
                    Ok(contains(TextCol::ContextJson, t))
                } else if other
                    .strip_prefix("metadata.")
                    .is_some_and(|k| !k.is_empty())
                {
                    Ok(contains(TextCol::MetadataJson, t))
                } else {
                    Err(format!("unknown field {other}"))
                }
            }
        }
    }

    /// A term without a field: any text field matching by word or word prefix.
    fn free_text(&self, t: &Term) -> Plan {
        let tags = self.tags(t, true);
        // `filename` is a part of the public ID, already covered. The text fields are tested
        // as one (the words index of PostgreSQL serves that).
        let words = match containment_needle(t, true) {
            Some(value) => Filter::Cond(Cond::ContainsAny {
                cols: vec![
                    TextCol::PublicId,
                    TextCol::DisplayName,
                    TextCol::AssetFolder,
                    TextCol::Format,
                    TextCol::ContextJson,
                ],
                value,
            }),
            None => anything().filter,
        };
        wider(Filter::or(vec![words, tags.filter]))
    }

    /// Tags matching a term: exactly, by listing the tags that match word by word when the
    /// distinct tags are known, else by containment.
    fn tags(&self, t: &Term, loose: bool) -> Plan {
        if t.op == Op::Exact {
            return exact(Filter::Cond(Cond::Tag {
                value: t.value.clone(),
                prefix: t.prefix,
            }));
        }
        if let Some(all) = self
            .tags
            .filter(|all| all.len() <= self.match_work_left.get())
        {
            self.match_work_left
                .set(self.match_work_left.get() - all.len());
            let hits: Vec<String> = all
                .iter()
                .filter(|tag| expression::text_match(tag, t, loose))
                .cloned()
                .collect();
            if hits.len() <= TAG_IN_LIMIT.min(self.tag_in_left.get()) {
                self.tag_in_left.set(self.tag_in_left.get() - hits.len());
                return exact(if hits.is_empty() {
                    Filter::Const(false)
                } else {
                    Filter::Cond(Cond::TagIn(hits))
                });
            }
        }
        match needle(t) {
            Some(v) if t.op == Op::Match => wider(Filter::Cond(Cond::TagContains(v))),
            _ => anything(),
        }
    }
}

fn text(col: TextCol, value: String, prefix: bool, fold: bool) -> Filter {
    Filter::Cond(Cond::Text {
        col,
        value,
        prefix,
        fold,
    })
}

/// What a matching value contains, lowered: the term's value (a prefix's folder without its
/// trailing slash); none when it cannot narrow anything.
fn needle(t: &Term) -> Option<String> {
    let v = t.value.to_lowercase();
    let v = if t.prefix {
        v.trim_end_matches('/').to_string()
    } else {
        v
    };
    (!v.is_empty() && v.is_ascii()).then_some(v)
}

/// What a containment test looks for, when it can narrow anything: the term's needle, for
/// terms that match words (not ranges or comparisons), safe in JSON text when `json` (the
/// columns tested hold JSON).
fn containment_needle(t: &Term, json: bool) -> Option<String> {
    let v = needle(t)?;
    let words = t.op != Op::Range && !matches!(t.op, Op::Lt | Op::Le | Op::Gt | Op::Ge);
    (words && (!json || json_safe(&v))).then_some(v)
}

/// Candidates whose column contains the term's value (ASCII letters in any case).
fn contains(col: TextCol, t: &Term) -> Plan {
    let json = matches!(
        col,
        TextCol::ContextJson | TextCol::MetadataJson | TextCol::ExtraJson
    );
    match containment_needle(t, json) {
        Some(value) => wider(Filter::Cond(Cond::Contains { col, value })),
        None => anything(),
    }
}

/// A term on a text column, as the expression matches it (`loose` off).
fn text_term(col: TextCol, t: &Term) -> Plan {
    match t.op {
        Op::Exact => exact(text(col, t.value.clone(), t.prefix, false)),
        Op::Match => {
            let want = t.value.to_lowercase();
            if !want.is_ascii() {
                return anything();
            }
            if matches!(col, TextCol::ResourceType | TextCol::DeliveryType) && !t.prefix {
                // Stored in lower case, always one word.
                return exact(text(col, want, false, false));
            }
            if t.prefix {
                // The value starts with it, or is the folder it names with a trailing slash.
                let mut any = vec![text(col, want.clone(), true, true)];
                if let Some(folder) = want.strip_suffix('/') {
                    any.push(text(col, folder.to_string(), false, true));
                }
                return exact(Filter::or(any));
            }
            let single_word_column = matches!(
                col,
                TextCol::ResourceType
                    | TextCol::DeliveryType
                    | TextCol::Format
                    | TextCol::AssetId
                    | TextCol::Etag
            );
            if !one_word(&want) || single_word_column {
                // Words never contain separators: only the whole value can be equal.
                exact(text(col, want, false, true))
            } else {
                contains(col, t)
            }
        }
        _ => anything(),
    }
}

/// A comparison of a number, with values read by `parse`.
fn number_term(
    n: NumExpr,
    t: &Term,
    parse: impl Fn(&str) -> Option<f64>,
) -> Result<Filter, String> {
    let (v, high) = expression::number_bounds(t, parse)?;
    let cond = |cmp: Cmp, value: f64| {
        Filter::Cond(Cond::Num {
            expr: n,
            cmp,
            value,
        })
    };
    let single = |cmp: Cmp| v.map(|v| cond(cmp, v)).unwrap_or(Filter::Const(false));
    Ok(match t.op {
        Op::Match | Op::Exact => single(Cmp::Eq),
        Op::Lt => single(Cmp::Lt),
        Op::Le => single(Cmp::Le),
        Op::Gt => single(Cmp::Gt),
        Op::Ge => single(Cmp::Ge),
        Op::Range => {
            let low = v.map(|v| cond(if t.inclusive.0 { Cmp::Ge } else { Cmp::Gt }, v));
            let high = high.map(|h| cond(if t.inclusive.1 { Cmp::Le } else { Cmp::Lt }, h));
            // The number must exist even with both bounds open.
            let exists = cond(Cmp::Ge, f64::MIN);
            Filter::and(vec![
                exists,
                low.unwrap_or(Filter::Const(true)),
                high.unwrap_or(Filter::Const(true)),
            ])
        }
    })
}
