//! Faults injected on purpose: rules matching a request's method, path pattern, cloud and
//! one parameter, answering a given status, Cloudinary error message and headers, or only
//! delaying the request, for N requests or for every one.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use crate::error::ApiError;
use crate::form::Params;

/// Rules kept at most.
const MAX_RULES: usize = 256;
/// Longest delay a rule may ask for.
const MAX_DELAY_MS: u64 = 120_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A rule as posted to `POST /_nephos/faults`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// `rate_limit`: a ready 420 answer with `X-FeatureRateLimit-*` headers.
    pub preset: Option<String>,
    pub method: Option<String>,
    /// `*` matches any run of characters (slashes included).
    pub path: Option<String>,
    pub cloud: Option<String>,
    /// `name=value` (`name=*`: the parameter is present).
    pub param: Option<String>,
    pub status: Option<u16>,
    pub message: Option<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    pub delay_ms: Option<u64>,
    /// How many matching requests the rule applies to; absent: every one.
    pub times: Option<u64>,
}

#[derive(Debug, Clone)]
struct Rule {
    id: u64,
    spec: RuleSpec,
    remaining: Option<u64>,
    hits: u64,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// What a matching rule makes of a request.
#[derive(Debug)]
pub struct Effect {
    pub delay: Option<Duration>,
    pub answer: Option<ApiError>,
}

#[derive(Default)]
pub struct Faults {
    rules: Mutex<(u64, Vec<Rule>)>,
}

fn matches_pattern(pattern: &str, text: &str) -> bool {
    // Iterative wildcard match: `*` is any run of characters.
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl RuleSpec {
    /// Fills a preset in and checks the rule.
    fn resolved(mut self) -> Result<RuleSpec, String> {
        match self.preset.as_deref() {
            None => {}
            Some("rate_limit") => {
                self.status.get_or_insert(420);
                self.message
                    .get_or_insert_with(|| "Rate Limit Exceeded".into());
                let reset = std::time::SystemTime::now() + Duration::from_secs(3600);
                for (k, v) in [
                    ("X-FeatureRateLimit-Limit", "500".to_string()),
                    ("X-FeatureRateLimit-Remaining", "0".to_string()),
                    ("X-FeatureRateLimit-Reset", httpdate::fmt_http_date(reset)),
                ] {
                    self.headers.entry(k.into()).or_insert(v);
                }
            }
            Some(other) => return Err(format!("Unknown fault preset {other} (known: rate_limit)")),
        }
        if self.status.is_none() && self.delay_ms.is_none() {
            return Err("A fault needs a status, a delay_ms or a preset".into());
        }
        if let Some(s) = self.status {
            if !(400..=599).contains(&s) {
                return Err(format!("Fault status {s} must be between 400 and 599"));
            }
        }
        if self.delay_ms.is_some_and(|d| d > MAX_DELAY_MS) {
            return Err(format!("delay_ms must be at most {MAX_DELAY_MS}"));
        }
        if self.times == Some(0) {
            return Err("times must be at least 1 (leave it out for every request)".into());
        }
        if let Some(p) = &self.param {
            if !p.contains('=') || p.starts_with('=') {
                return Err(format!("param {p:?} must look like name=value or name=*"));
            }
        }
        Ok(self)
    }

    fn matches(
        &self,
        method: &str,
        path: &str,
        cloud: Option<&str>,
        params: Option<&Params>,
    ) -> bool {
        if self
            .method
            .as_deref()
            .is_some_and(|m| !m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        if self
            .path
            .as_deref()
            .is_some_and(|p| !matches_pattern(p, path))
        {
            return false;
        }
        if self.cloud.as_deref().is_some_and(|c| Some(c) != cloud) {
            return false;
        }
        match (
            self.param.as_deref().and_then(|p| p.split_once('=')),
            params,
        ) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((name, want)), Some(params)) => match params.text(name) {
                Some(v) => want == "*" || v == want,
                None => params.get(name).is_some() && want == "*",
            },
        }
    }
}

impl Rule {
    fn json(&self) -> Json {
        json!({
            "id": self.id.to_string(),
            "preset": self.spec.preset,
            "method": self.spec.method,
            "path": self.spec.path,
            "cloud": self.spec.cloud,
            "param": self.spec.param,
            "status": self.spec.status,
            "message": self.spec.message,
            "headers": self.spec.headers,
            "delay_ms": self.spec.delay_ms,
            "times": self.spec.times,
            "remaining": self.remaining,
            "hits": self.hits,
        })
    }

    fn effect(&self) -> Effect {
        let answer = self.spec.status.map(|s| {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = self
                .spec
                .message
                .clone()
                .or_else(|| status.canonical_reason().map(str::to_string))
                .unwrap_or_else(|| "Injected fault".into());
            ApiError::Injected(status, message, self.headers.clone())
        });
        Effect {
            delay: self.spec.delay_ms.map(Duration::from_millis),
            answer,
        }
    }
}

impl Faults {
    /// Adds a rule; answers it as JSON.
    pub fn add(&self, spec: RuleSpec) -> Result<Json, String> {
        let spec = spec.resolved()?;
        let mut headers = Vec::new();
        for (k, v) in &spec.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("Invalid header name {k:?}"))?;
            let value =
                HeaderValue::from_str(v).map_err(|_| format!("Invalid value of header {k}"))?;
            headers.push((name, value));
        }
        let mut rules = lock(&self.rules);
        if rules.1.len() >= MAX_RULES {
            return Err(format!("At most {MAX_RULES} fault rules"));
        }
        rules.0 += 1;
        let rule = Rule {
            id: rules.0,
            remaining: spec.times,
            spec,
            hits: 0,
            headers,
        };
        let out = rule.json();
        rules.1.push(rule);
        Ok(out)
    }

    pub fn list(&self) -> Vec<Json> {
        lock(&self.rules).1.iter().map(Rule::json).collect()
    }

    pub fn remove(&self, id: &str) -> bool {
        let mut rules = lock(&self.rules);
        let before = rules.1.len();
        rules.1.retain(|r| r.id.to_string() != id);
        before != rules.1.len()
    }

    pub fn clear(&self) {
        lock(&self.rules).1.clear();
    }

    /// Removes the rules limited to a cloud (the cloud is gone).
    pub fn remove_cloud(&self, cloud: &str) {
        lock(&self.rules)
            .1
            .retain(|r| r.spec.cloud.as_deref() != Some(cloud));
    }

    /// Whether any rule looks at parameters (only then do calls check again once read).
    pub fn any_with_param(&self) -> bool {
        lock(&self.rules).1.iter().any(|r| r.spec.param.is_some())
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.rules).1.is_empty()
    }

    /// The effect of the first rule that matches (consuming one of its times). Without
    /// `params`, rules about a parameter are not considered; with them, only those are.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        cloud: Option<&str>,
        params: Option<&Params>,
    ) -> Option<Effect> {
        let mut rules = lock(&self.rules);
        // `/health` is faulted only by a rule that names its path.
        let idx = rules.1.iter().position(|r| {
            r.spec.param.is_some() == params.is_some()
                && (path != "/health" || r.spec.path.is_some())
                && r.spec.matches(method, path, cloud, params)
        })?;
        let rule = &mut rules.1[idx];
        rule.hits += 1;
        let effect = rule.effect();
        if let Some(left) = rule.remaining.as_mut() {
            *left -= 1;
            if *left == 0 {
                rules.1.remove(idx);
            }
        }
        Some(effect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches_pattern(
            "/v1_1/*/image/upload",
            "/v1_1/demo/image/upload"
        ));
        assert!(matches_pattern("*", "/anything/at/all"));
        assert!(matches_pattern("/v1_1/*/upload", "/v1_1/demo/image/upload"));
        assert!(!matches_pattern(
            "/v1_1/*/video/upload",
            "/v1_1/demo/image/upload"
        ));
        assert!(matches_pattern("/a*b*c", "/aXXbYYc"));
        assert!(!matches_pattern("/a*b*c", "/aXXbYY"));
    }

    #[test]
    fn rules_count_down_and_presets_fill_in() {
        let f = Faults::default();
        f.add(RuleSpec {
            preset: Some("rate_limit".into()),
            path: Some("/v1_1/*/resources*".into()),
            times: Some(2),
            ..Default::default()
        })
        .unwrap();
        for _ in 0..2 {
            let e = f
                .check("GET", "/v1_1/demo/resources/image", Some("demo"), None)
                .unwrap();
            match e.answer {
                Some(ApiError::Injected(s, m, h)) => {
                    assert_eq!(s.as_u16(), 420);
                    assert_eq!(m, "Rate Limit Exceeded");
                    assert!(h
                        .iter()
                        .any(|(k, v)| k == "x-featureratelimit-remaining" && v == "0"));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(f
            .check("GET", "/v1_1/demo/resources/image", Some("demo"), None)
            .is_none());
    }

    #[test]
    fn parameter_rules_wait_for_parameters() {
        let f = Faults::default();
        f.add(RuleSpec {
            param: Some("public_id=boom".into()),
            status: Some(500),
            ..Default::default()
        })
        .unwrap();
        assert!(f.check("POST", "/x", None, None).is_none());
        let mut p = Params::default();
        p.push("public_id", "calm");
        assert!(f.check("POST", "/x", None, Some(&p)).is_none());
        p.set("public_id", crate::form::Value::Text("boom".into()));
        assert!(f.check("POST", "/x", None, Some(&p)).is_some());
    }

    #[test]
    fn bad_rules_are_refused() {
        let f = Faults::default();
        assert!(f.add(RuleSpec::default()).is_err());
        assert!(f
            .add(RuleSpec {
                status: Some(200),
                ..Default::default()
            })
            .is_err());
        assert!(f
            .add(RuleSpec {
                preset: Some("nope".into()),
                ..Default::default()
            })
            .is_err());
        assert!(f
            .add(RuleSpec {
                delay_ms: Some(10_000_000),
                ..Default::default()
            })
            .is_err());
    }
}
