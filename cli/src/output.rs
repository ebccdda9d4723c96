//! Writing to standard output: pretty JSON, JSON lines, aligned tables and
//! plain lines. Every write is flushed (a stream is read as it comes) and a
//! closed stdout (`zf op ls | head`) ends the command quietly.

use std::io::Write;

use serde_json::Value;

use crate::error::CliError;

fn write(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => CliError::Closed,
            _ => CliError::Local(format!("cannot write to standard output: {e}")),
        })
}

/// One line of text.
pub fn line(text: impl std::fmt::Display) -> Result<(), CliError> {
    write(&format!("{text}\n"))
}

/// A JSON value, pretty, as `--json` prints an answer.
pub fn json(value: &Value) -> Result<(), CliError> {
    line(pretty(value))
}

/// A JSON value on one line, as `--json` prints each entry of a stream.
pub fn json_line(value: &Value) -> Result<(), CliError> {
    line(value)
}

pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// A field for people: strings as they are, null as `-`, the rest as compact JSON.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `sha256:` and the first 12 hex digits, enough to tell bundles apart.
pub fn short_digest(value: &Value) -> String {
    let full = text(value);
    match full.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => format!("sha256:{}", &hex[..12]),
        _ => full,
    }
}

/// Every line of `text` indented by `by` spaces.
pub fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Columns aligned by the widest cell; the last column is not padded.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut cells = Vec::with_capacity(row.len());
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    cells.push(cell.clone());
                } else {
                    let pad = widths[c].saturating_sub(cell.chars().count());
                    cells.push(format!("{cell}{}", " ".repeat(pad)));
                }
            }
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) -> Result<(), CliError> {
        write(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["ID", "STATE"]);
        table.row(vec!["a-long-id".into(), "running".into()]);
        table.row(vec!["b".into(), "complete".into()]);
        assert_eq!(
            table.render(),
            "ID         STATE\na-long-id  running\nb          complete\n"
        );
    }

    #[test]
    fn fields_read_as_text() {
        assert_eq!(text(&json!(null)), "-");
        assert_eq!(text(&json!("x")), "x");
        assert_eq!(text(&json!(3)), "3");
        assert_eq!(text(&json!({"a": 1})), r#"{"a":1}"#);
        assert_eq!(
            short_digest(&json!("sha256:0123456789abcdef0123")),
            "sha256:0123456789ab"
        );
    }
}
