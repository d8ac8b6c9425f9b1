//! A small Liquid renderer: the subset Studio flow templates here use (outputs, the filters
//! `default` and `to_json`, one level of `if`/`elsif`/`else`), with Studio's semantics. Shared by
//! the flow tests and the round trip against the server.

#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// A value as a Liquid template sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Liquid {
    Nil,
    Str(String),
    /// A variable that holds fields (e.g. `widgets.reply_and_wait.inbound` once a reply came).
    Object,
}

/// What Studio holds when a template renders: each leaf variable and its text.
#[derive(Clone, Debug, Default)]
pub struct Context(pub BTreeMap<String, String>);

impl Context {
    pub fn with(mut self, path: &str, value: impl Into<String>) -> Self {
        self.0.insert(path.to_owned(), value.into());
        self
    }

    fn lookup(&self, path: &str) -> Liquid {
        assert!(
            !path.is_empty()
                && path
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'),
            "unsupported Liquid expression {path:?}"
        );
        if let Some(value) = self.0.get(path) {
            return Liquid::Str(value.clone());
        }
        let prefix = format!("{path}.");
        if self.0.keys().any(|k| k.starts_with(&prefix)) {
            Liquid::Object
        } else {
            Liquid::Nil
        }
    }

    /// A variable path or a single-quoted literal.
    fn operand(&self, expr: &str) -> Liquid {
        let expr = expr.trim();
        match expr.strip_prefix('\'').and_then(|e| e.strip_suffix('\'')) {
            Some(literal) => Liquid::Str(literal.to_owned()),
            None => self.lookup(expr),
        }
    }
}

/// A piece of a template: literal text, `{{ output }}` or `{% tag %}` (inner text).
#[derive(Debug)]
pub enum Node<'a> {
    Text(&'a str),
    Output(&'a str),
    Tag(&'a str),
}

pub fn lex(template: &str) -> Vec<Node<'_>> {
    let mut nodes = Vec::new();
    let mut rest = template;
    loop {
        let start = match (rest.find("{{"), rest.find("{%")) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => break,
        };
        if start > 0 {
            nodes.push(Node::Text(&rest[..start]));
        }
        let is_output = rest[start..].starts_with("{{");
        let close = if is_output { "}}" } else { "%}" };
        let end = start
            + 2
            + rest[start + 2..]
                .find(close)
                .unwrap_or_else(|| panic!("unclosed Liquid markup in {template:?}"));
        let inner = &rest[start + 2..end];
        nodes.push(if is_output {
            Node::Output(inner)
        } else {
            Node::Tag(inner)
        });
        rest = &rest[end + 2..];
    }
    if !rest.is_empty() {
        nodes.push(Node::Text(rest));
    }
    nodes
}

/// Evaluates `{{ operand | filter | … }}` and returns the text Studio would insert.
pub fn output(expr: &str, ctx: &Context) -> String {
    let mut parts = expr.split('|');
    let mut value = ctx.operand(parts.next().expect("an operand"));
    let filters: Vec<&str> = parts.map(str::trim).collect();
    for (i, filter) in filters.iter().enumerate() {
        if *filter == "to_json" {
            assert_eq!(
                i + 1,
                filters.len(),
                "to_json must be the last filter: {expr:?}"
            );
            return match value {
                Liquid::Nil => "null".to_owned(),
                Liquid::Str(s) => serde_json::to_string(&s).expect("a string serialises"),
                Liquid::Object => panic!("to_json on an object is not used here: {expr:?}"),
            };
        }
        let fallback = filter
            .strip_prefix("default:")
            .unwrap_or_else(|| panic!("unsupported Liquid filter {filter:?} in {expr:?}"));
        if matches!(&value, Liquid::Nil) || value == Liquid::Str(String::new()) {
            value = ctx.operand(fallback);
        }
    }
    match value {
        Liquid::Nil => String::new(),
        Liquid::Str(s) => s,
        Liquid::Object => panic!("{expr:?} prints an object"),
    }
}

/// `path`, or `path contains 'text'`. Only `nil` (and `false`) are falsy in Liquid.
pub fn condition(cond: &str, ctx: &Context) -> bool {
    assert!(
        !cond.contains(" or ") && !cond.contains(" and "),
        "unsupported Liquid condition {cond:?}"
    );
    match cond.split_once(" contains ") {
        Some((lhs, rhs)) => match (ctx.operand(lhs), ctx.operand(rhs)) {
            (Liquid::Str(haystack), Liquid::Str(needle)) => haystack.contains(&needle),
            (Liquid::Nil, _) => false,
            other => panic!("unsupported `contains` operands {other:?}"),
        },
        None => ctx.operand(cond) != Liquid::Nil,
    }
}

/// Renders `template` as Studio's Liquid would: outputs, filters `default` and `to_json`, and
/// one level of `if` / `elsif` / `else` / `endif`.
pub fn render(template: &str, ctx: &Context) -> String {
    let mut out = String::new();
    // (a branch was taken, the current branch renders)
    let mut branch: Option<(bool, bool)> = None;
    for node in lex(template) {
        match node {
            Node::Tag(tag) => {
                let tag = tag.trim();
                if let Some(cond) = tag.strip_prefix("if ") {
                    assert!(branch.is_none(), "nested `if` in {template:?}");
                    let hit = condition(cond, ctx);
                    branch = Some((hit, hit));
                } else if let Some(cond) = tag.strip_prefix("elsif ") {
                    let (taken, _) = branch.expect("`elsif` outside `if`");
                    let hit = !taken && condition(cond, ctx);
                    branch = Some((taken || hit, hit));
                } else if tag == "else" {
                    let (taken, _) = branch.expect("`else` outside `if`");
                    branch = Some((true, !taken));
                } else if tag == "endif" {
                    branch.take().expect("`endif` outside `if`");
                } else {
                    panic!("unsupported Liquid tag {tag:?}");
                }
            }
            _ if matches!(branch, Some((_, false))) => {}
            Node::Text(text) => out.push_str(text),
            Node::Output(expr) => out.push_str(&output(expr, ctx)),
        }
    }
    assert!(branch.is_none(), "unclosed `if` in {template:?}");
    out
}

/// Every `{{ … }}` expression in `template`, trimmed.
pub fn outputs(template: &str) -> Vec<&str> {
    lex(template)
        .into_iter()
        .filter_map(|node| match node {
            Node::Output(expr) => Some(expr.trim()),
            _ => None,
        })
        .collect()
}

pub fn render_object(template: &str, ctx: &Context) -> Map<String, Value> {
    let rendered = render(template, ctx);
    match serde_json::from_str(&rendered) {
        Ok(Value::Object(map)) => map,
        Ok(other) => panic!("renders to a non-object: {other}"),
        Err(e) => panic!("renders to invalid JSON ({e}): {rendered}"),
    }
}
