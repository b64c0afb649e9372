//! Exactly once from the clinic's stream: what this box has delivered of
//! every other node ([`Delivered`]: per origin node its epoch and last seq,
//! and the stream cursor, all kept in `state.db` with the events they
//! cover), the rule that orders the live channel and the stream
//! ([`Delivered::live`], [`Delivered::from_stream`]), and the stream's
//! entries as Redis returns them ([`entries`], [`StreamEntry`]).
//!
//! Live Pub/Sub is the fast path; an envelope is applied from it only when
//! it is the origin's next seq. Anything else (a gap, an unknown origin,
//! a new epoch) is left to the stream, read from the cursor, which applies
//! every entry not yet delivered, in stream order.

use std::cmp::Ordering;
use std::collections::HashMap;

use redis::Value;

use crate::store::{OriginSeq, RemoteProgress};

/// What to do with one event of another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Apply,
    /// Delivered before (live, then again from the stream, or the reverse).
    Duplicate,
    /// The live channel skipped some of the origin's events: read the stream.
    Behind,
}

/// How far this box has delivered the other nodes' events.
#[derive(Debug, Default)]
pub struct Delivered {
    pub progress: RemoteProgress,
}

impl Delivered {
    /// For a live envelope: applied only as the origin's next seq. An
    /// envelope without an epoch comes from a publisher that numbers
    /// nothing (a central service on the channel only): applied as is.
    pub fn live(&self, node: &str, epoch: Option<&str>, seq: u64) -> Verdict {
        let Some(epoch) = epoch else {
            return Verdict::Apply;
        };
        match self.progress.origins.get(node) {
            Some(known) if known.epoch == epoch && seq <= known.seq => Verdict::Duplicate,
            Some(known) if known.epoch == epoch && seq == known.seq + 1 => Verdict::Apply,
            _ => Verdict::Behind,
        }
    }

    /// For a stream entry: everything not yet delivered, in stream order
    /// (a new epoch of the origin starts its numbering again).
    pub fn from_stream(&self, node: &str, epoch: &str, seq: u64) -> Verdict {
        match self.progress.origins.get(node) {
            Some(known) if known.epoch == epoch && seq <= known.seq => Verdict::Duplicate,
            _ => Verdict::Apply,
        }
    }

    /// Records what a stored publish delivered.
    pub fn advance(&mut self, made: &RemoteProgress) {
        self.progress.merge(made);
    }
}

/// What `made` adds for one applied event of `node`.
pub fn origin_seq(made: &mut RemoteProgress, node: &str, epoch: &str, seq: u64) {
    made.origins.insert(
        node.to_owned(),
        OriginSeq {
            epoch: epoch.to_owned(),
            seq,
        },
    );
}

/// A stream entry id, `<ms>-<n>`, compared as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryId(pub u64, pub u64);

impl EntryId {
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, n) = text.split_once('-')?;
        Some(Self(ms.parse().ok()?, n.parse().ok()?))
    }

    /// Redis's clock when the entry was added, Unix milliseconds.
    pub fn ms(self) -> u64 {
        self.0
    }
}

/// Whether entries after `cursor` were trimmed away before this box read
/// them: `max_deleted` (XINFO STREAM's `max-deleted-entry-id`, Redis 7) or,
/// without it, the first entry still there, newer than the cursor (which
/// can also mean nothing was missed, when the cursor was the entry before).
pub fn gap_after(cursor: &str, max_deleted: Option<&str>, first: Option<&str>) -> bool {
    let Some(cursor) = EntryId::parse(cursor) else {
        return false;
    };
    match (max_deleted.and_then(EntryId::parse), first.and_then(EntryId::parse)) {
        (Some(deleted), _) => deleted.cmp(&cursor) == Ordering::Greater,
        (None, Some(first)) => first > cursor && cursor != EntryId(0, 0),
        (None, None) => false,
    }
}

/// One entry of the clinic's stream: its id and fields (text; a field that
/// is not UTF-8 is left out, and the entry then reads as malformed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: HashMap<String, String>,
}

impl StreamEntry {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// The entries of an XRANGE reply. Never fails on one bad entry: a
/// publisher on the central Redis may write anything there.
pub fn entries(reply: Value) -> Vec<StreamEntry> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items.into_iter().filter_map(entry).collect()
}

fn entry(item: Value) -> Option<StreamEntry> {
    let Value::Array(mut parts) = item else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let values = parts.pop()?;
    let id = text(parts.pop()?)?;
    let mut fields = HashMap::new();
    let pairs: Vec<(Value, Value)> = match values {
        Value::Array(flat) => {
            let mut flat = flat.into_iter();
            let mut pairs = Vec::new();
            while let (Some(key), Some(value)) = (flat.next(), flat.next()) {
                pairs.push((key, value));
            }
            pairs
        }
        Value::Map(pairs) => pairs,
        _ => Vec::new(),
    };
    for (key, value) in pairs {
        if let (Some(key), Some(value)) = (text(key), text(value)) {
            fields.insert(key, value);
        }
    }
    Some(StreamEntry { id, fields })
}

/// A string reply as text.
pub fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

/// One field of an `XINFO STREAM` reply (a flat array or a map).
pub fn info_field(reply: &Value, name: &str) -> Option<Value> {
    let pairs: Vec<(&Value, &Value)> = match reply {
        Value::Array(flat) => flat.chunks(2).filter_map(|pair| match pair {
            [key, value] => Some((key, value)),
            _ => None,
        }).collect(),
        Value::Map(pairs) => pairs.iter().map(|(key, value)| (key, value)).collect(),
        _ => return None,
    };
    pairs
        .into_iter()
        .find(|(key, _)| text((*key).clone()).as_deref() == Some(name))
        .map(|(_, value)| value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(node: &str, epoch: &str, seq: u64) -> Delivered {
        let mut delivered = Delivered::default();
        let mut made = RemoteProgress::default();
        origin_seq(&mut made, node, epoch, seq);
        delivered.advance(&made);
        delivered
    }

    #[test]
    fn live_applies_only_the_next_seq() {
        let delivered = known("a", "e1", 10);
        assert_eq!(delivered.live("a", Some("e1"), 11), Verdict::Apply);
        assert_eq!(delivered.live("a", Some("e1"), 10), Verdict::Duplicate);
        assert_eq!(delivered.live("a", Some("e1"), 3), Verdict::Duplicate);
        assert_eq!(delivered.live("a", Some("e1"), 12), Verdict::Behind);
        assert_eq!(delivered.live("a", Some("e2"), 1), Verdict::Behind);
        assert_eq!(delivered.live("b", Some("e9"), 1), Verdict::Behind);
        assert_eq!(delivered.live("c", None, 7), Verdict::Apply);
    }

    #[test]
    fn the_stream_applies_whatever_is_not_delivered() {
        let delivered = known("a", "e1", 10);
        assert_eq!(delivered.from_stream("a", "e1", 10), Verdict::Duplicate);
        assert_eq!(delivered.from_stream("a", "e1", 15), Verdict::Apply);
        assert_eq!(delivered.from_stream("a", "e2", 1), Verdict::Apply);
        assert_eq!(delivered.from_stream("b", "x", 1), Verdict::Apply);
    }

    #[test]
    fn entry_ids_order_as_redis_does() {
        assert!(EntryId::parse("10-2") > EntryId::parse("10-1"));
        assert!(EntryId::parse("9-99") < EntryId::parse("10-0"));
        assert_eq!(EntryId::parse("x-1"), None);
        assert_eq!(EntryId::parse("12"), None);
    }

    #[test]
    fn a_gap_is_what_was_trimmed_past_the_cursor() {
        assert!(gap_after("5-0", Some("7-0"), Some("8-0")));
        assert!(!gap_after("5-0", Some("5-0"), Some("6-0")));
        assert!(!gap_after("5-0", Some("0-0"), Some("1-0")));
        assert!(gap_after("5-0", None, Some("8-0")));
        assert!(!gap_after("0-0", None, Some("8-0")));
        assert!(!gap_after("5-0", None, None));
    }

    #[test]
    fn entries_survive_bad_ones() {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("node"), bulk("a"), bulk("seq"), bulk("1")]),
            ]),
            Value::Int(3),
            Value::Array(vec![
                bulk("2-0"),
                Value::Array(vec![bulk("node"), Value::BulkString(vec![0xff, 0xfe])]),
            ]),
        ]);
        let parsed = entries(reply);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].field("seq"), Some("1"));
        assert_eq!(parsed[1].id, "2-0");
        assert_eq!(parsed[1].field("node"), None);
    }
}
