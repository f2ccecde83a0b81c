//! Source positions for the config file. serde_yaml gives a position only for the first
//! structural error, so config loading (startup and every reload) parses the text a
//! second time with yaml-rust2's marked event parser and records, for every key path
//! such as `models.chat.targets[0].provider`, where its key and its value start. The
//! semantic checks in `check.rs` look errors up here. The same pass finds duplicate
//! mapping keys, which serde_yaml resolves silently for maps (the last one wins).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column; orders by position in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    /// Where an error goes when nothing better is known: the top of the file.
    pub const START: Pos = Pos { line: 1, col: 1 };

    fn from_marker(mark: Marker) -> Self {
        // yaml-rust2 counts lines from 1 but columns from 0.
        Pos {
            line: mark.line().max(1),
            col: mark.col() + 1,
        }
    }
}

/// Where a key and its value start. Sequence items have no key: both are the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub key: Pos,
    pub value: Pos,
}

/// A mapping key written twice in the same mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// Path of the repeated key, e.g. `providers.openai`.
    pub path: String,
    /// The repeated occurrence.
    pub at: Pos,
    /// The first occurrence.
    pub first: Pos,
}

/// The text is not YAML at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ScanFailure {
    pub at: Pos,
    pub message: String,
}

/// A key path: `server.listen[0]`, `models["gpt-3.5-turbo"].targets[1].weight`.
/// Keys made only of `[A-Za-z0-9_-]` join with a dot; any other key is quoted in
/// brackets, so a model named `a.b` cannot collide with the path `a` → `b`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath {
    text: String,
    /// `text` length before each segment, so parents are prefixes.
    cuts: Vec<usize>,
}

impl KeyPath {
    /// The document root (the empty path).
    pub fn root() -> Self {
        Self::default()
    }

    /// The path of `key` inside this mapping.
    pub fn key(&self, key: &str) -> Self {
        let plain = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let segment = match (plain, self.text.is_empty()) {
            (true, true) => key.to_owned(),
            (true, false) => format!(".{key}"),
            (false, _) => format!("[{key:?}]"),
        };
        self.push(&segment)
    }

    /// The path of item `index` of this sequence.
    pub fn index(&self, index: usize) -> Self {
        self.push(&format!("[{index}]"))
    }

    fn push(&self, segment: &str) -> Self {
        let mut cuts = self.cuts.clone();
        cuts.push(self.text.len());
        Self {
            text: format!("{}{segment}", self.text),
            cuts,
        }
    }

    /// The enclosing path; `None` at the root.
    fn parent(&self) -> Option<Self> {
        let (&cut, rest) = self.cuts.split_last()?;
        Some(Self {
            text: self.text[..cut].to_owned(),
            cuts: rest.to_vec(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Every key path of one file with its position, plus the duplicate keys found.
#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    spans: HashMap<String, Span>,
    pub duplicates: Vec<Duplicate>,
}

impl SpanIndex {
    /// Indexes `text` (its first document only, as serde_yaml reads it).
    pub fn parse(text: &str) -> Result<Self, ScanFailure> {
        let mut indexer = Indexer::default();
        Parser::new_from_str(text)
            .load(&mut indexer, false)
            .map_err(|err| ScanFailure {
                at: Pos::from_marker(*err.marker()),
                message: err.info().to_owned(),
            })?;
        Ok(Self {
            spans: indexer.spans,
            duplicates: indexer.duplicates,
        })
    }

    /// Where the key of `path` starts; for a path not in the file (a missing key), the
    /// nearest enclosing key that is.
    pub fn key(&self, path: &KeyPath) -> Pos {
        self.nearest(path).map_or(Pos::START, |span| span.key)
    }

    /// Where the value of `path` starts, with the same fallback as [`SpanIndex::key`].
    pub fn value(&self, path: &KeyPath) -> Pos {
        self.nearest(path).map_or(Pos::START, |span| span.value)
    }

    fn nearest(&self, path: &KeyPath) -> Option<Span> {
        let mut current = Some(path.clone());
        while let Some(candidate) = current {
            if let Some(span) = self.spans.get(candidate.as_str()) {
                return Some(*span);
            }
            current = candidate.parent();
        }
        None
    }
}

/// Where a mapping is in its key/value alternation.
#[derive(Debug)]
enum MapState {
    ExpectKey,
    /// A key node has started (a container when the key is complex).
    InKey(KeyPath),
    ExpectValue(KeyPath),
    InValue,
}

#[derive(Debug)]
enum Frame {
    Map {
        path: KeyPath,
        state: MapState,
        seen: HashMap<String, Pos>,
    },
    Seq {
        path: KeyPath,
        next: usize,
    },
}

#[derive(Debug, Default)]
struct Indexer {
    frames: Vec<Frame>,
    spans: HashMap<String, Span>,
    duplicates: Vec<Duplicate>,
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match event {
            Event::Scalar(text, ..) => {
                self.place(pos, Some(&text));
                self.complete();
            }
            Event::Alias(_) => {
                self.place(pos, None);
                self.complete();
            }
            Event::MappingStart(..) => {
                let path = self.place(pos, None);
                self.frames.push(Frame::Map {
                    path,
                    state: MapState::ExpectKey,
                    seen: HashMap::new(),
                });
            }
            Event::SequenceStart(..) => {
                let path = self.place(pos, None);
                self.frames.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.frames.pop();
                self.complete();
            }
            _ => {}
        }
    }
}

impl Indexer {
    /// A node starts at `pos`: works out its path from the enclosing container and
    /// records it. `scalar` is the node's text when it is a scalar.
    fn place(&mut self, pos: Pos, scalar: Option<&str>) -> KeyPath {
        let Some(frame) = self.frames.last_mut() else {
            return KeyPath::root();
        };
        match frame {
            Frame::Seq { path, next } => {
                let item = path.index(*next);
                self.spans.insert(
                    item.text.clone(),
                    Span {
                        key: pos,
                        value: pos,
                    },
                );
                item
            }
            Frame::Map { path, state, seen } => match std::mem::replace(state, MapState::InValue) {
                MapState::ExpectValue(key_path) => {
                    if let Some(span) = self.spans.get_mut(key_path.as_str()) {
                        span.value = pos;
                    }
                    key_path
                }
                // A key. Complex keys (a mapping or sequence used as a key) get a path
                // no config field can have, so nothing looks them up.
                _ => {
                    let key_path = path.key(scalar.unwrap_or("<complex key>"));
                    if seen.is_empty() {
                        Self::pull_start_back(&mut self.spans, path, pos);
                    }
                    if let Some(key) = scalar {
                        Self::note_key(seen, &mut self.duplicates, &key_path, key, pos);
                    }
                    self.spans.entry(key_path.text.clone()).or_insert(Span {
                        key: pos,
                        value: pos,
                    });
                    *state = MapState::InKey(key_path.clone());
                    key_path
                }
            },
        }
    }

    /// yaml-rust2 marks a block mapping that is a sequence item at its first `:`, not
    /// at its first key; the first key is where a reader sees the mapping start.
    fn pull_start_back(spans: &mut HashMap<String, Span>, map: &KeyPath, first_key: Pos) {
        if let Some(span) = spans.get_mut(map.as_str()) {
            span.key = span.key.min(first_key);
            span.value = span.value.min(first_key);
        }
    }

    fn note_key(
        seen: &mut HashMap<String, Pos>,
        duplicates: &mut Vec<Duplicate>,
        path: &KeyPath,
        key: &str,
        pos: Pos,
    ) {
        match seen.get(key) {
            Some(first) => duplicates.push(Duplicate {
                path: path.text.clone(),
                at: pos,
                first: *first,
            }),
            None => {
                seen.insert(key.to_owned(), pos);
            }
        }
    }

    /// The node just placed has ended: advance the enclosing container.
    fn complete(&mut self) {
        match self.frames.last_mut() {
            Some(Frame::Seq { next, .. }) => *next += 1,
            Some(Frame::Map { state, .. }) => {
                *state = match std::mem::replace(state, MapState::ExpectKey) {
                    MapState::InKey(key_path) => MapState::ExpectValue(key_path),
                    _ => MapState::ExpectKey,
                };
            }
            None => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const TEXT: &str = "\
server:
  listen: [\"127.0.0.1:8080\", \"[::1]:8080\"]
models:
  gpt-3.5-turbo:
    targets:
      - { provider: a, model: m }
      - provider: b
        model: n
";

    fn path(parts: &[&str]) -> KeyPath {
        parts
            .iter()
            .fold(KeyPath::root(), |p, part| match part.parse::<usize>() {
                Ok(i) => p.index(i),
                Err(_) => p.key(part),
            })
    }

    #[test]
    fn path_rendering() {
        assert_eq!(
            path(&["models", "chat", "targets", "0", "provider"]).as_str(),
            "models.chat.targets[0].provider"
        );
        assert_eq!(
            path(&["models", "gpt-3.5-turbo", "aliases"]).as_str(),
            "models[\"gpt-3.5-turbo\"].aliases"
        );
    }

    #[test]
    fn positions_of_keys_and_values() {
        let index = SpanIndex::parse(TEXT).unwrap();
        let listen1 = path(&["server", "listen", "1"]);
        assert_eq!(index.value(&listen1), Pos { line: 2, col: 30 });
        let model = path(&["models", "gpt-3.5-turbo"]);
        assert_eq!(index.key(&model), Pos { line: 4, col: 3 });
        let flow = path(&["models", "gpt-3.5-turbo", "targets", "0", "model"]);
        assert_eq!(index.key(&flow), Pos { line: 6, col: 24 });
        assert_eq!(index.value(&flow), Pos { line: 6, col: 31 });
        let item = path(&["models", "gpt-3.5-turbo", "targets", "1"]);
        assert_eq!(index.key(&item), Pos { line: 7, col: 9 });
        let block = path(&["models", "gpt-3.5-turbo", "targets", "1", "model"]);
        assert_eq!(index.key(&block), Pos { line: 8, col: 9 });
        assert_eq!(index.value(&block), Pos { line: 8, col: 16 });
        assert!(index.duplicates.is_empty());
    }

    #[test]
    fn missing_path_falls_back_to_parent() {
        let index = SpanIndex::parse(TEXT).unwrap();
        let absent = path(&["models", "gpt-3.5-turbo", "balance"]);
        assert_eq!(index.key(&absent), Pos { line: 4, col: 3 });
        assert_eq!(index.key(&path(&["nothing"])), Pos::START);
    }

    #[test]
    fn finds_duplicate_keys_at_any_depth() {
        let text = "a: 1\nb:\n  c: 1\n  c: 2\na: 3\nd: {e: 1, e: 2}\n";
        let index = SpanIndex::parse(text).unwrap();
        let found: Vec<_> = index
            .duplicates
            .iter()
            .map(|d| (d.path.as_str(), d.at, d.first))
            .collect();
        assert_eq!(
            found,
            vec![
                ("b.c", Pos { line: 4, col: 3 }, Pos { line: 3, col: 3 }),
                ("a", Pos { line: 5, col: 1 }, Pos { line: 1, col: 1 }),
                ("d.e", Pos { line: 6, col: 11 }, Pos { line: 6, col: 5 }),
            ]
        );
    }

    #[test]
    fn same_key_in_sibling_mappings_is_fine() {
        let text = "a: {x: 1}\nb: {x: 1}\nl:\n  - x: 1\n  - x: 2\n";
        assert!(SpanIndex::parse(text).unwrap().duplicates.is_empty());
    }

    #[test]
    fn scan_error_has_position() {
        let err = SpanIndex::parse("a: [1,\nb: \"x\n").unwrap_err();
        assert!(err.at.line >= 1);
        assert!(!err.message.is_empty());
    }

    #[test]
    fn complex_keys_and_aliases_do_not_derail() {
        let text = "? [a, b]\n: 1\nx: &anchor {k: 1}\ny: *anchor\nz: 2\n";
        let index = SpanIndex::parse(text).unwrap();
        assert_eq!(index.key(&path(&["z"])), Pos { line: 5, col: 1 });
        assert_eq!(index.value(&path(&["y"])), Pos { line: 4, col: 4 });
    }
}
