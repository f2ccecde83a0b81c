//! Every unknown key of a file, not just the first.
//!
//! `switchyard check` and every load. serde's `deny_unknown_fields` stops at the first
//! unknown key, which would hide a second typo until the first is fixed. So, once serde has
//! reported one, the file is deserialised again from a `serde_yaml::Value` through
//! `serde_path_to_error` (which names the key's path), the key is removed, and the loop goes
//! on until no unknown key is left. Positions come from the span index.

use serde_path_to_error::Segment;
use serde_yaml::Value;

use super::check::ConfigError;
use super::raw::RawConfig;
use super::spans::{KeyPath, SpanIndex};

/// More unknown keys than this in one file are not worth listing one by one.
const MAX_REPORTED: usize = 50;

/// Unknown-key errors of `text`, in file order. Empty if the file has none or does not parse
/// as YAML at all (the caller reports that error instead).
pub fn unknown_keys(text: &str, file: &str, spans: &SpanIndex) -> Vec<ConfigError> {
    let Ok(mut value) = serde_yaml::from_str::<Value>(text) else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    while errors.len() < MAX_REPORTED {
        let Err(err) = serde_path_to_error::deserialize::<_, Option<RawConfig>>(value.clone())
        else {
            break;
        };
        let message = err.inner().to_string();
        if !message.starts_with("unknown field") {
            break;
        }
        let segments: Vec<Segment> = err.path().iter().cloned().collect();
        if !remove(&mut value, &segments) {
            break;
        }
        let pos = spans.key(&key_path(&segments));
        // Named like serde's own first error: `models.m.pricing: unknown field ...`.
        let parent = key_path(&segments[..segments.len().saturating_sub(1)]);
        let message = if parent.as_str().is_empty() {
            message
        } else {
            format!("{parent}: {message}")
        };
        errors.push(ConfigError::new(file, pos, message));
    }
    errors
}

fn key_path(segments: &[Segment]) -> KeyPath {
    segments
        .iter()
        .fold(KeyPath::root(), |path, segment| match segment {
            Segment::Seq { index } => path.index(*index),
            Segment::Map { key } | Segment::Enum { variant: key } => path.key(key),
            Segment::Unknown => path,
        })
}

/// Removes the key at `segments` (its last segment) from the tree; false if not found.
fn remove(value: &mut Value, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = value;
    for segment in parents {
        let next = match segment {
            Segment::Seq { index } => node.get_mut(*index),
            Segment::Map { key } | Segment::Enum { variant: key } => node.get_mut(key.as_str()),
            Segment::Unknown => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    match (last, node.as_mapping_mut()) {
        (Segment::Map { key }, Some(map)) => map.remove(key.as_str()).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_with_its_line() {
        let text = "server:\n  lisen: []\nmodels:\n  chat:\n    targets: []\n    balanc: x\n    aliases: []\nextra: 1\n";
        let spans = SpanIndex::parse(text).unwrap();
        let errs = unknown_keys(text, "f.yaml", &spans);
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(
            shown[0].starts_with("f.yaml:2:3: server: unknown field `lisen`"),
            "{shown:?}"
        );
        assert!(
            shown[1].starts_with("f.yaml:6:5: models.chat: unknown field `balanc`"),
            "{shown:?}"
        );
        assert!(
            shown[2].starts_with("f.yaml:8:1: unknown field `extra`"),
            "{shown:?}"
        );
    }

    #[test]
    fn no_unknown_keys_no_errors() {
        let text = "server:\n  listen: [\"127.0.0.1:1\"]\n";
        let spans = SpanIndex::parse(text).unwrap();
        assert!(unknown_keys(text, "f", &spans).is_empty());
    }
}
