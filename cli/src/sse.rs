//! Server-sent events (`text/event-stream`) parsed from bytes as they
//! arrive: `id:`, `event:` and `data:` fields, comments (keep-alives), lines
//! ended by LF, CRLF or CR, split anywhere across chunks. The transport
//! (reconnect, resume) is [`crate::feed`]'s.

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The `id:` given with this event, if any.
    pub id: Option<String>,
    /// The `event:` name, `message` when none was given.
    pub event: String,
    /// Every `data:` line, joined by `\n`.
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    /// A comment line (`:` ...), which servers send as keep-alive.
    Comment,
}

/// Turns chunks of a stream into [`Item`]s.
#[derive(Default)]
pub struct Parser {
    line: Vec<u8>,
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl Parser {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Item> {
        let mut items = Vec::new();
        for &byte in bytes {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue; // the LF of a CRLF
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(item) = self.end_line(&String::from_utf8_lossy(&line)) {
                        items.push(item);
                    }
                }
                _ => self.line.push(byte),
            }
        }
        items
    }

    fn end_line(&mut self, line: &str) -> Option<Item> {
        if line.is_empty() {
            let event = self.event.take();
            let id = self.id.take();
            return self.data.take().map(|data| {
                Item::Frame(Frame {
                    id,
                    event: event.unwrap_or_else(|| "message".to_string()),
                    data,
                })
            });
        }
        if line.starts_with(':') {
            return Some(Item::Comment);
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {} // retry, unknown fields
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: &str, event: &str, data: &str) -> Item {
        Item::Frame(Frame {
            id: Some(id.into()),
            event: event.into(),
            data: data.into(),
        })
    }

    #[test]
    fn frames_split_anywhere_parse_the_same() {
        let stream = "id: 1\nevent: event\ndata: {\"seq\":1}\n\n:\n\nid:2\r\nevent:event\r\ndata:{\"seq\":2}\r\n\r\nid: 3\revent: log\rdata: a\rdata: b\r\r";
        let whole = Parser::default().feed(stream.as_bytes());
        assert_eq!(
            whole,
            vec![
                frame("1", "event", "{\"seq\":1}"),
                Item::Comment,
                frame("2", "event", "{\"seq\":2}"),
                frame("3", "log", "a\nb"),
            ]
        );
        for split in 0..stream.len() {
            let mut parser = Parser::default();
            let mut items = parser.feed(&stream.as_bytes()[..split]);
            items.extend(parser.feed(&stream.as_bytes()[split..]));
            assert_eq!(items, whole, "split at {split}");
        }
        let mut bytewise = Parser::default();
        let items: Vec<Item> = stream.bytes().flat_map(|b| bytewise.feed(&[b])).collect();
        assert_eq!(items, whole);
    }

    #[test]
    fn events_without_data_or_name_follow_the_spec() {
        let items = Parser::default().feed(b"id: 7\n\ndata: x\n\nretry: 10\nfoo\ndata\n\n");
        assert_eq!(
            items,
            vec![
                Item::Frame(Frame {
                    id: None,
                    event: "message".into(),
                    data: "x".into()
                }),
                Item::Frame(Frame {
                    id: None,
                    event: "message".into(),
                    data: String::new()
                }),
            ],
            "an event without data is not dispatched; its id goes with it"
        );
        let unfinished = Parser::default().feed(b"id: 1\ndata: half");
        assert!(unfinished.is_empty(), "nothing before the blank line");
    }
}
