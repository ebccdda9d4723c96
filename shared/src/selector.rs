//! Labels on resources and the selectors that pick resources by them, in
//! the syntax operators know from Kubernetes: requirements separated by
//! commas, all of which must hold —
//! `role=web` (also `==`), `env!=prod`, `env in (prod,stage)`,
//! `env notin (dev)`, `canary` (the label is set), `!canary` (it is not).
//! Pure: parsing and matching only, so management, the CLI and tests share
//! one reading of a selector.

use std::collections::BTreeMap;
use std::fmt;

/// Labels of one resource: key → value.
pub type Labels = BTreeMap<String, String>;

/// Longest label key or value.
pub const MAX_LABEL_LENGTH: usize = 63;
/// Most labels one resource may carry.
pub const MAX_LABELS: usize = 64;

/// Why a label or a selector is refused; says what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("label {what} {text:?} is invalid: use 1 to {MAX_LABEL_LENGTH} letters, digits, '-', '_' or '.', starting and ending with a letter or digit")]
    BadName { what: &'static str, text: String },
    #[error("a resource carries at most {MAX_LABELS} labels, not {0}")]
    TooMany(usize),
    #[error("selector {selector:?}: {why} at character {at}")]
    Syntax {
        selector: String,
        why: String,
        at: usize,
    },
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

impl Requirement {
    fn holds(&self, labels: &Labels) -> bool {
        match self {
            Self::Equals(k, v) => labels.get(k) == Some(v),
            // As in Kubernetes: a resource without the label passes `!=`.
            Self::NotEquals(k, v) => labels.get(k) != Some(v),
            Self::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Self::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Self::Exists(k) => labels.contains_key(k),
            Self::Absent(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
    text: String,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let requirements = Parser::new(text).requirements()?;
        Ok(Self {
            requirements,
            text: text.trim().to_string(),
        })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.holds(labels))
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn valid_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL_LENGTH
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Checks a resource's labels: valid keys and values, not too many.
pub fn check_labels(labels: &Labels) -> Result<(), SelectorError> {
    if labels.len() > MAX_LABELS {
        return Err(SelectorError::TooMany(labels.len()));
    }
    for (key, value) in labels {
        if !valid_name(key) {
            return Err(SelectorError::BadName {
                what: "key",
                text: key.clone(),
            });
        }
        if !valid_name(value) {
            return Err(SelectorError::BadName {
                what: "value",
                text: value.clone(),
            });
        }
    }
    Ok(())
}

/// A hand-written recursive-descent reader of the selector grammar.
struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    fn error(&self, why: impl Into<String>) -> SelectorError {
        SelectorError::Syntax {
            selector: self.text.to_string(),
            why: why.into(),
            at: self.at + 1,
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_spaces();
        if self.rest().starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    /// A key or value: the longest run of name characters.
    fn name(&mut self, what: &'static str) -> Result<String, SelectorError> {
        self.skip_spaces();
        let len = self
            .rest()
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            .count();
        let name = &self.rest()[..len];
        if name.is_empty() {
            return Err(self.error(format!("expected a label {what}")));
        }
        if !valid_name(name) {
            return Err(self.error(
                SelectorError::BadName {
                    what,
                    text: name.to_string(),
                }
                .to_string(),
            ));
        }
        self.at += len;
        Ok(name.to_string())
    }

    /// `in`/`notin` only as whole words, so `index=1` stays a key.
    fn keyword(&mut self, word: &str) -> bool {
        self.skip_spaces();
        let rest = self.rest();
        let whole = rest.starts_with(word)
            && rest[word.len()..]
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace() || c == '(');
        if whole {
            self.at += word.len();
        }
        whole
    }

    fn values(&mut self) -> Result<Vec<String>, SelectorError> {
        if !self.eat("(") {
            return Err(self.error("expected '(' and a list of values"));
        }
        let mut values = vec![self.name("value")?];
        while self.eat(",") {
            values.push(self.name("value")?);
        }
        if !self.eat(")") {
            return Err(self.error("expected ',' or ')'"));
        }
        Ok(values)
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.eat("!") {
            return Ok(Requirement::Absent(self.name("key")?));
        }
        let key = self.name("key")?;
        if self.eat("==") || self.eat("=") {
            return Ok(Requirement::Equals(key, self.name("value")?));
        }
        if self.eat("!=") {
            return Ok(Requirement::NotEquals(key, self.name("value")?));
        }
        if self.keyword("notin") {
            return Ok(Requirement::NotIn(key, self.values()?));
        }
        if self.keyword("in") {
            return Ok(Requirement::In(key, self.values()?));
        }
        Ok(Requirement::Exists(key))
    }

    fn requirements(mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut out = Vec::new();
        self.skip_spaces();
        if self.rest().is_empty() {
            return Ok(out);
        }
        loop {
            out.push(self.requirement()?);
            self.skip_spaces();
            if self.rest().is_empty() {
                return Ok(out);
            }
            if !self.eat(",") {
                return Err(self.error("expected ',' between requirements"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn matches(selector: &str, pairs: &[(&str, &str)]) -> bool {
        Selector::parse(selector)
            .unwrap_or_else(|e| panic!("{selector}: {e}"))
            .matches(&labels(pairs))
    }

    #[test]
    fn the_usual_syntax_selects_as_expected() {
        let web_prod = [("role", "web"), ("env", "prod")];
        assert!(matches("role=web", &web_prod));
        assert!(matches("role==web", &web_prod));
        assert!(matches(" role = web , env in (prod, stage) ", &web_prod));
        assert!(matches("role=web,env in (prod,stage),!canary", &web_prod));
        assert!(!matches(
            "role=web,env in (prod,stage),!canary",
            &[("role", "web"), ("env", "prod"), ("canary", "yes")]
        ));
        assert!(!matches("env notin (prod)", &web_prod));
        assert!(matches("env notin (dev)", &web_prod));
        assert!(matches("env notin (dev)", &[]), "no label passes notin");
        assert!(matches("env!=dev", &[]), "no label passes !=");
        assert!(!matches("env in (prod)", &[]));
        assert!(matches("role", &web_prod));
        assert!(!matches("zone", &web_prod));
        assert!(matches("", &web_prod), "the empty selector selects all");
        assert!(
            matches("index=1", &[("index", "1")]),
            "a key may start with 'in'"
        );
        assert!(matches("innate in (x)", &[("innate", "x")]));
    }

    #[test]
    fn bad_selectors_say_what_and_where() {
        for (selector, says) in [
            ("role=", "expected a label value"),
            ("role=web,", "expected a label key"),
            ("role web", "expected ','"),
            ("env in prod", "expected '('"),
            ("env in (prod", "expected ',' or ')'"),
            ("env in ()", "expected a label value"),
            ("=web", "expected a label key"),
            ("role=-web", "label value \"-web\" is invalid"),
            ("role=web-", "label value \"web-\" is invalid"),
        ] {
            let error = Selector::parse(selector).expect_err(selector).to_string();
            assert!(error.contains(says), "{selector}: {error}");
            assert!(error.contains(selector), "{selector}: {error}");
        }
    }

    #[test]
    fn labels_are_checked() {
        assert!(check_labels(&labels(&[("role", "web"), ("app.tier", "front_1")])).is_ok());
        let long = "a".repeat(MAX_LABEL_LENGTH + 1);
        for bad in [
            labels(&[("", "x")]),
            labels(&[("role", "we b")]),
            labels(&[(&long, "x")]),
        ] {
            assert!(check_labels(&bad).is_err(), "{bad:?}");
        }
        let many: Labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert_eq!(
            check_labels(&many),
            Err(SelectorError::TooMany(MAX_LABELS + 1))
        );
    }
}
