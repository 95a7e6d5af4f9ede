//! [`SearchQuery`]s, counts and aggregations rendered as SQL for both databases.
//!
//! Text is compared by code point as in Rust: SQLite's default `BINARY` collation does that,
//! and PostgreSQL's `"C"` collation (named on every ordering comparison) does too. ASCII
//! letters are folded with `lower` on SQLite (which folds only those) and with `translate` on
//! PostgreSQL (whose `lower` would fold every letter).

use std::collections::HashMap;

use sqlx::Row;

use super::{row_to_asset, Dialect, SqlStore, ASSET_COLUMNS};
use crate::db::query::{
    AggField, Cmp, Cond, Filter, NumExpr, SearchQuery, SortExpr, SortValue, TextCol,
};
use crate::db::{AssetRecord, DbError};

enum Bind {
    Text(String),
    Num(f64),
    Int(i64),
}

/// A statement under construction and its parameters.
struct Sql {
    dialect: Dialect,
    text: String,
    binds: Vec<Bind>,
    /// Rows come from the tag index (`t`): creation time and asset ID are read there.
    by_tag: bool,
}

impl Sql {
    fn new(dialect: Dialect) -> Sql {
        Sql {
            dialect,
            text: String::new(),
            binds: Vec::new(),
            by_tag: false,
        }
    }

    fn text(&mut self, v: &str) -> String {
        self.binds.push(Bind::Text(v.to_string()));
        format!("${}", self.binds.len())
    }

    fn num(&mut self, v: f64) -> String {
        self.binds.push(Bind::Num(v));
        format!("CAST(${} AS DOUBLE PRECISION)", self.binds.len())
    }

    /// A number compared with `expr`: a whole one against a whole-number expression stays a
    /// `BIGINT`, so that the column's indexes serve the comparison.
    fn num_for(&mut self, expr: NumExpr, v: f64) -> String {
        if integral(expr) && v.fract() == 0.0 && v.abs() < 9.0e15 {
            self.binds.push(Bind::Int(v as i64));
            format!("CAST(${} AS BIGINT)", self.binds.len())
        } else {
            self.num(v)
        }
    }

    /// The asset ID that orders rows.
    fn id_col(&self) -> &'static str {
        if self.by_tag {
            "t.asset_id"
        } else {
            "a.asset_id"
        }
    }

    /// An expression compared by code point.
    fn ordered(&self, expr: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("({expr}) COLLATE \"C\""),
            Dialect::Sqlite => expr.to_string(),
        }
    }

    /// An expression with its ASCII letters lowered.
    fn folded(&self, expr: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!(
                "translate({expr}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"
            ),
            Dialect::Sqlite => format!("lower({expr})"),
        }
    }

    /// `expr` starts with `prefix`, as a range the indexes can serve.
    fn starts_with(&mut self, expr: &str, prefix: &str) -> String {
        let Some(next) = successor(prefix) else {
            return "1=1".into();
        };
        let (lo, hi) = (self.text(prefix), self.text(&next));
        let e = self.ordered(expr);
        format!("({e} >= {lo} AND {e} < {hi})")
    }

    /// `expr` contains `value` (lower case) in any case: ASCII letters in SQLite's `LIKE`;
    /// every letter in PostgreSQL's `ILIKE`, which selects more (these conditions select
    /// candidates, checked afterwards) at a fraction of folding each row first.
    fn contains(&mut self, expr: &str, value: &str) -> String {
        let v = self.text(&like_pattern(value));
        let op = match self.dialect {
            Dialect::Postgres => "ILIKE",
            Dialect::Sqlite => "LIKE",
        };
        format!("{expr} {op} {v} ESCAPE '\\'")
    }

    /// `expr` equals `value` (starts with it when `prefix`), by code point. Equality is the
    /// same under every (deterministic) collation, so it names the collation of the index that
    /// serves it: "C" where `code_point_index` (folded columns, public and asset IDs), the
    /// column's own otherwise (resource and delivery types, whose indexes use it).
    fn text_test(
        &mut self,
        expr: &str,
        value: &str,
        prefix: bool,
        code_point_index: bool,
    ) -> String {
        if prefix {
            self.starts_with(expr, value)
        } else {
            let v = self.text(value);
            if code_point_index {
                format!("{} = {v}", self.ordered(expr))
            } else {
                format!("{expr} = {v}")
            }
        }
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for b in &self.binds {
            q = match b {
                Bind::Text(s) => q.bind(s.clone()),
                Bind::Num(n) => q.bind(*n),
                Bind::Int(n) => q.bind(*n),
            };
        }
        q
    }

    fn filter(&mut self, f: &Filter) -> String {
        match f {
            Filter::Const(true) => "1=1".into(),
            Filter::Const(false) => "1=0".into(),
            Filter::Not(inner) => format!("NOT ({})", self.filter(inner)),
            Filter::All(parts) => self.join(parts, " AND "),
            Filter::Any(parts) => self.join(parts, " OR "),
            Filter::Cond(c) => self.cond(c),
        }
    }

    fn join(&mut self, parts: &[Filter], sep: &str) -> String {
        let rendered: Vec<String> = parts.iter().map(|p| self.filter(p)).collect();
        format!("({})", rendered.join(sep))
    }

    fn cond(&mut self, c: &Cond) -> String {
        match c {
            Cond::Num { expr, cmp, value } => {
                let e = num_sql(*expr);
                let whole = integral(*expr) && value.fract() == 0.0;
                let v = self.num_for(*expr, *value);
                let test = match cmp {
                    Cmp::Eq if whole => format!("{e} = {v}"),
                    Cmp::Eq => format!("ABS({e} - {v}) < 1e-9"),
                    Cmp::Lt => format!("{e} < {v}"),
                    Cmp::Le => format!("{e} <= {v}"),
                    Cmp::Gt => format!("{e} > {v}"),
                    Cmp::Ge => format!("{e} >= {v}"),
                };
                format!("({e} IS NOT NULL AND {test})")
            }
            Cond::Text {
                col,
                value,
                prefix,
                fold,
            } => {
                let raw = text_sql(*col);
                let folded = self.folded(raw);
                if *fold {
                    return self.text_test(&folded, value, *prefix, true);
                }
                let code_point = matches!(col, TextCol::PublicId | TextCol::AssetId);
                let test = self.text_test(raw, value, *prefix, code_point);
                if matches!(col, TextCol::PublicId | TextCol::AssetFolder) {
                    // Through the index of the folded column, then exactly.
                    let hint = self.text_test(&folded, &value.to_ascii_lowercase(), *prefix, true);
                    format!("({hint} AND {test})")
                } else {
                    test
                }
            }
            Cond::Contains { col, value } => self.contains(text_sql(*col), value),
            Cond::ContainsAny { cols, value } => {
                let sep = match self.dialect {
                    Dialect::Postgres => " || chr(31) || ",
                    Dialect::Sqlite => " || char(31) || ",
                };
                let joined: Vec<&str> = cols.iter().map(|c| text_sql(*c)).collect();
                self.contains(&format!("({})", joined.join(sep)), value)
            }
            Cond::Tag { value, prefix } => {
                let test = if *prefix {
                    self.starts_with("t.tag", value)
                } else {
                    let v = self.text(value);
                    format!("t.tag = {v}")
                };
                tag_exists(&test)
            }
            Cond::TagIn(tags) => {
                if tags.is_empty() {
                    return "1=0".into();
                }
                let ps: Vec<String> = tags.iter().map(|t| self.text(t)).collect();
                tag_exists(&format!("t.tag IN ({})", ps.join(", ")))
            }
            Cond::TagContains(value) => {
                let test = self.contains("t.tag", value);
                tag_exists(&test)
            }
        }
    }

    fn sort_sql(&self, s: SortExpr) -> String {
        match s {
            SortExpr::Text(col) => self.ordered(text_sql(col)),
            // Columns that always hold a number sort as they are (their indexes serve it).
            SortExpr::Num(NumExpr::CreatedAt) if self.by_tag => "t.created_at".into(),
            SortExpr::Num(n @ (NumExpr::Bytes | NumExpr::Version | NumExpr::CreatedAt)) => {
                num_sql(n).to_string()
            }
            SortExpr::Num(n) => format!("COALESCE({}, -1)", num_sql(n)),
        }
    }

    /// Rows after the position: lexicographic over the sort keys, then asset ID descending.
    fn after(
        &mut self,
        sort: &[(SortExpr, bool)],
        values: &[SortValue],
        asset_id: &str,
    ) -> Result<String, DbError> {
        if values.len() != sort.len() {
            return Err(DbError::Corrupt("the cursor does not fit the sort".into()));
        }
        let mut ors = Vec::new();
        let mut equal: Vec<String> = Vec::new();
        for ((expr, ascending), value) in sort.iter().zip(values) {
            let e = self.sort_sql(*expr);
            let v = match (expr, value) {
                (SortExpr::Num(e), SortValue::Num(n)) => self.num_for(*e, *n),
                (SortExpr::Text(_), SortValue::Text(t)) => self.text(t),
                _ => return Err(DbError::Corrupt("the cursor does not fit the sort".into())),
            };
            let op = if *ascending { ">" } else { "<" };
            let mut term = equal.clone();
            term.push(format!("{e} {op} {v}"));
            ors.push(format!("({})", term.join(" AND ")));
            equal.push(format!("{e} = {v}"));
        }
        let id = self.text(asset_id);
        let mut last = equal;
        last.push(format!("{} < {id}", self.ordered(self.id_col())));
        ors.push(format!("({})", last.join(" AND ")));
        Ok(format!("({})", ors.join(" OR ")))
    }
}

/// Assets with a tag row passing `test` (an uncorrelated subquery: both databases read the
/// matching tag rows once, by index).
fn tag_exists(test: &str) -> String {
    format!("a.asset_id IN (SELECT t.asset_id FROM asset_tags t WHERE {test})")
}

/// A tag equality that can drive a query: the filter is that tag, or that tag and more.
/// Answers the tag and the rest of the filter.
fn driving_tag(filter: &Filter) -> Option<(String, Filter)> {
    let tag_of = |f: &Filter| match f {
        Filter::Cond(Cond::Tag {
            value,
            prefix: false,
        }) => Some(value.clone()),
        Filter::Cond(Cond::TagIn(tags)) if tags.len() == 1 => Some(tags[0].clone()),
        _ => None,
    };
    if let Some(t) = tag_of(filter) {
        return Some((t, Filter::Const(true)));
    }
    let Filter::All(parts) = filter else {
        return None;
    };
    let at = parts.iter().position(|p| tag_of(p).is_some())?;
    let tag = tag_of(&parts[at])?;
    let rest = parts
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != at)
        .map(|(_, p)| p.clone())
        .collect();
    Some((tag, Filter::and(rest)))
}

fn text_sql(col: TextCol) -> &'static str {
    match col {
        TextCol::PublicId => "a.public_id",
        TextCol::AssetId => "a.asset_id",
        TextCol::DisplayName => "a.display_name",
        TextCol::AssetFolder => "a.asset_folder",
        TextCol::ResourceType => "a.resource_type",
        TextCol::DeliveryType => "a.delivery_type",
        TextCol::Format => "COALESCE(a.format, '')",
        TextCol::Etag => "a.etag",
        TextCol::ContextJson => "a.context",
        TextCol::MetadataJson => "a.metadata",
        TextCol::ExtraJson => "a.extra",
    }
}

/// Whether an expression is a whole number (all but the aspect ratio).
fn integral(n: NumExpr) -> bool {
    !matches!(n, NumExpr::AspectRatio)
}

fn num_sql(n: NumExpr) -> &'static str {
    match n {
        NumExpr::Bytes => "a.bytes",
        NumExpr::Width => "a.width",
        NumExpr::Height => "a.height",
        NumExpr::Pages => "a.pages",
        NumExpr::Version => "a.version",
        NumExpr::CreatedAt => "a.created_at",
        NumExpr::Pixels => "(a.width * a.height)",
        NumExpr::AspectRatio => "(CAST(a.width AS DOUBLE PRECISION) / NULLIF(a.height, 0))",
    }
}

/// `%value%` with LIKE's wildcards and the escape character escaped.
fn like_pattern(value: &str) -> String {
    let mut out = String::from("%");
    for c in value.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// The smallest string above every string starting with `prefix` (its last character
/// incremented); none when every string qualifies.
pub(super) fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut n = last as u32 + 1;
        if (0xD800..0xE000).contains(&n) {
            n = 0xE000;
        }
        if let Some(c) = char::from_u32(n) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl SqlStore {
    pub(super) async fn search_page(&self, q: &SearchQuery) -> Result<Vec<AssetRecord>, DbError> {
        let mut sql = Sql::new(self.dialect);
        let cloud = sql.text(&q.cloud);
        // Newest (or oldest) first with one tag: read in order from the tag index.
        let tag_order = matches!(q.sort.as_slice(), [(SortExpr::Num(NumExpr::CreatedAt), _)]);
        let (from, mut conds) = match driving_tag(&q.filter).filter(|_| tag_order) {
            Some((tag, rest)) => {
                sql.by_tag = true;
                let t = sql.text(&tag);
                let rest = sql.filter(&rest);
                (
                    "asset_tags t JOIN assets a ON a.asset_id = t.asset_id",
                    vec![
                        format!("t.cloud = {cloud} AND t.tag = {t} AND a.cloud = {cloud}"),
                        rest,
                    ],
                )
            }
            None => (
                "assets a",
                vec![format!("a.cloud = {cloud}"), sql.filter(&q.filter)],
            ),
        };
        if let Some((values, id)) = &q.after {
            let after = sql.after(&q.sort, values, id)?;
            conds.push(after);
        }
        let mut order: Vec<String> = q
            .sort
            .iter()
            .map(|(s, asc)| format!("{} {}", sql.sort_sql(*s), if *asc { "ASC" } else { "DESC" }))
            .collect();
        order.push(format!("{} DESC", sql.ordered(sql.id_col())));
        let cols: Vec<String> = ASSET_COLUMNS
            .split(',')
            .map(|c| format!("a.{}", c.trim()))
            .collect();
        sql.text = format!(
            "SELECT {} FROM {from} WHERE {} ORDER BY {} LIMIT {}",
            cols.join(", "),
            conds.join(" AND "),
            order.join(", "),
            q.limit.clamp(1, 10_000)
        );
        let mut conn = self.read.acquire().await?;
        let rows = sql.query().fetch_all(&mut *conn).await?;
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>("asset_id"))
            .collect::<Result<_, _>>()?;
        let mut tags = tags_of(&mut conn, &ids).await?;
        rows.iter()
            .zip(&ids)
            .map(|(row, id)| row_to_asset(row, tags.remove(id).unwrap_or_default()))
            .collect()
    }

    pub(super) async fn count_matching(
        &self,
        cloud: &str,
        filter: &Filter,
    ) -> Result<i64, DbError> {
        let mut sql = Sql::new(self.dialect);
        let c = sql.text(cloud);
        sql.text = match driving_tag(filter) {
            // The tag index alone counts the assets with one tag.
            Some((tag, Filter::Const(true))) => {
                let t = sql.text(&tag);
                format!(
                    "SELECT COUNT(*) AS n FROM asset_tags t WHERE t.cloud = {c} AND t.tag = {t}"
                )
            }
            Some((tag, rest)) => {
                let t = sql.text(&tag);
                let f = sql.filter(&rest);
                format!(
                    "SELECT COUNT(*) AS n FROM asset_tags t JOIN assets a ON a.asset_id = t.asset_id \
                     WHERE t.cloud = {c} AND t.tag = {t} AND a.cloud = {c} AND {f}"
                )
            }
            None => {
                let f = sql.filter(filter);
                format!("SELECT COUNT(*) AS n FROM assets a WHERE a.cloud = {c} AND {f}")
            }
        };
        let row = sql.query().fetch_one(&self.read).await?;
        Ok(row.try_get::<i64, _>("n")?)
    }

    pub(super) async fn aggregate_matching(
        &self,
        cloud: &str,
        filter: &Filter,
        field: AggField,
    ) -> Result<Vec<(String, i64)>, DbError> {
        let mut sql = Sql::new(self.dialect);
        let c = sql.text(cloud);
        let f = sql.filter(filter);
        let (value, from, extra) = match field {
            AggField::ResourceType => ("a.resource_type", "assets a", ""),
            AggField::DeliveryType => ("a.delivery_type", "assets a", ""),
            AggField::Format => ("a.format", "assets a", " AND a.format IS NOT NULL"),
            AggField::AssetFolder => ("a.asset_folder", "assets a", ""),
            AggField::Tags => (
                "t.tag",
                "assets a JOIN asset_tags t ON t.asset_id = a.asset_id",
                "",
            ),
        };
        sql.text = format!(
            "SELECT {value} AS v, COUNT(*) AS n FROM {from} WHERE a.cloud = {c} AND {f}{extra} \
             GROUP BY {value} ORDER BY n DESC, v LIMIT 10000"
        );
        let rows = sql.query().fetch_all(&self.read).await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>("v")?, r.try_get::<i64, _>("n")?)))
            .collect()
    }

    /// Distinct tags of every cloud in order, at most `limit` (one index probe each).
    pub(super) async fn distinct_tag_list(&self, limit: i64) -> Result<Vec<String>, DbError> {
        let sql = format!(
            "WITH RECURSIVE d(tag, n) AS ( \
               SELECT (SELECT MIN(tag) FROM asset_tags), 1 \
               UNION ALL \
               SELECT (SELECT MIN(t.tag) FROM asset_tags t WHERE t.tag > d.tag), d.n + 1 \
               FROM d WHERE d.tag IS NOT NULL AND d.n < {limit} \
             ) SELECT tag FROM d WHERE tag IS NOT NULL"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.read).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("tag").map_err(DbError::from))
            .collect()
    }
}

/// The tags of these assets, each list sorted (one query).
pub(super) async fn tags_of(
    conn: &mut sqlx::AnyConnection,
    ids: &[String],
) -> Result<HashMap<String, Vec<String>>, DbError> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for group in ids.chunks(500) {
        let ps: Vec<String> = (1..=group.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT asset_id, tag FROM asset_tags WHERE asset_id IN ({}) ORDER BY asset_id, tag",
            ps.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for id in group {
            q = q.bind(id.clone());
        }
        for row in q.fetch_all(&mut *conn).await? {
            out.entry(row.try_get("asset_id")?)
                .or_default()
                .push(row.try_get("tag")?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors_bound_prefixes() {
        assert_eq!(successor("ab").as_deref(), Some("ac"));
        assert_eq!(successor("a/").as_deref(), Some("a0"));
        assert_eq!(successor(""), None);
        assert_eq!(successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("a_b%c\\"), "%a\\_b\\%c\\\\%");
    }
}
