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
    pub fn in_stream(&self, node: &str, epoch: &str, seq: u64) -> Verdict {
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

impl std::fmt::Display for EntryId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}-{}", self.0, self.1)
    }
}

/// What `XINFO STREAM` says of the clinic's stream at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub length: u64,
    /// Every entry ever added (Redis 7; trimming does not lower it).
    pub entries_added: Option<u64>,
    pub last_generated: Option<EntryId>,
    pub first: Option<String>,
}

impl StreamInfo {
    /// A stream that does not exist: nothing was ever added to it.
    pub fn none() -> Self {
        Self {
            length: 0,
            entries_added: Some(0),
            last_generated: None,
            first: None,
        }
    }

    /// From an `XINFO STREAM` reply (a flat array or a map).
    pub fn parse(reply: &Value) -> Self {
        let number = |name| match info_field(reply, name) {
            Some(Value::Int(n)) => u64::try_from(n).ok(),
            Some(other) => text(other).and_then(|text| text.parse().ok()),
            None => None,
        };
        Self {
            length: number("length").unwrap_or(0),
            entries_added: number("entries-added"),
            last_generated: info_field(reply, "last-generated-id")
                .and_then(text)
                .and_then(|id| EntryId::parse(&id)),
            first: info_field(reply, "first-entry")
                .and_then(|entry| entries(Value::Array(vec![entry])).pop())
                .map(|entry| entry.id),
        }
    }

    /// Whether entries after the one at `offset` were trimmed away before
    /// this box read them: the first entry still there has offset
    /// `entries_added - length + 1` (the gateway never deletes entries, it
    /// only trims the oldest). A stream with fewer entries ever added than
    /// `offset` is a new one (Redis lost its data): not a gap this box can see.
    pub fn gap_after(&self, offset: Option<u64>) -> bool {
        match (offset, self.entries_added) {
            (Some(offset), Some(added)) => added >= offset && added - self.length > offset,
            _ => false,
        }
    }

    /// The offset of the last of `read`, the entries an XRANGE after this
    /// reply returned from the entry at `offset` on (`gap`: entries were
    /// trimmed in between): known when the read reached the stream's end
    /// as of this reply, or counted on from a known offset without a gap.
    pub fn offset_after(
        &self,
        offset: Option<u64>,
        gap: bool,
        read: &[StreamEntry],
    ) -> Option<u64> {
        let added = self.entries_added?;
        let ids: Vec<Option<EntryId>> =
            read.iter().map(|entry| EntryId::parse(&entry.id)).collect();
        let last_generated = self.last_generated.unwrap_or(EntryId(0, 0));
        let reached_end = match ids.last() {
            Some(last) => last.is_some_and(|last| last >= last_generated),
            None => true,
        };
        if reached_end {
            let newer = ids
                .iter()
                .filter(|id| id.is_some_and(|id| id > last_generated))
                .count();
            return Some(added + newer as u64);
        }
        match offset {
            Some(offset) if !gap && added >= offset => Some(offset + read.len() as u64),
            _ => None,
        }
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
fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

/// One field of an `XINFO STREAM` reply (a flat array or a map).
fn info_field(reply: &Value, name: &str) -> Option<Value> {
    let pairs: Vec<(&Value, &Value)> = match reply {
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|pair| match pair {
                [key, value] => Some((key, value)),
                _ => None,
            })
            .collect(),
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
        assert_eq!(delivered.in_stream("a", "e1", 10), Verdict::Duplicate);
        assert_eq!(delivered.in_stream("a", "e1", 15), Verdict::Apply);
        assert_eq!(delivered.in_stream("a", "e2", 1), Verdict::Apply);
        assert_eq!(delivered.in_stream("b", "x", 1), Verdict::Apply);
    }

    #[test]
    fn entry_ids_order_as_redis_does() {
        assert!(EntryId::parse("10-2") > EntryId::parse("10-1"));
        assert!(EntryId::parse("9-99") < EntryId::parse("10-0"));
        assert_eq!(EntryId::parse("x-1"), None);
        assert_eq!(EntryId::parse("12"), None);
    }

    fn info(length: u64, added: u64, last: &str) -> StreamInfo {
        StreamInfo {
            length,
            entries_added: Some(added),
            last_generated: EntryId::parse(last),
            first: None,
        }
    }

    fn read(ids: &[&str]) -> Vec<StreamEntry> {
        ids.iter()
            .map(|id| StreamEntry {
                id: (*id).to_owned(),
                fields: HashMap::new(),
            })
            .collect()
    }

    #[test]
    fn a_gap_is_what_was_trimmed_past_the_cursor() {
        // 50 added, 10 kept: offsets 41..=50 are there.
        let stream = info(10, 50, "50-0");
        assert!(!stream.gap_after(Some(40)), "the next one, 41, is there");
        assert!(!stream.gap_after(Some(45)));
        assert!(stream.gap_after(Some(39)), "40 was trimmed unread");
        assert!(!stream.gap_after(None), "unknown offset: nothing to tell");
        assert!(!stream.gap_after(Some(60)), "a new stream is not a gap");
        let before_redis_7 = StreamInfo {
            entries_added: None,
            ..stream
        };
        assert!(!before_redis_7.gap_after(Some(1)));
    }

    #[test]
    fn the_offset_is_known_at_the_streams_end_and_counted_from_there() {
        let stream = info(10, 50, "50-0");
        assert_eq!(
            stream.offset_after(None, false, &read(&["49-0", "50-0"])),
            Some(50)
        );
        assert_eq!(stream.offset_after(None, false, &[]), Some(50));
        // Added between XINFO and XRANGE.
        assert_eq!(
            stream.offset_after(None, false, &read(&["50-0", "51-0", "52-0"])),
            Some(52)
        );
        // A full batch short of the end.
        assert_eq!(
            stream.offset_after(Some(40), false, &read(&["41-0", "42-0"])),
            Some(42)
        );
        assert_eq!(stream.offset_after(None, false, &read(&["41-0"])), None);
        assert_eq!(stream.offset_after(Some(30), true, &read(&["41-0"])), None);
        let before_redis_7 = StreamInfo {
            entries_added: None,
            ..stream
        };
        assert_eq!(
            before_redis_7.offset_after(Some(40), false, &read(&["50-0"])),
            None
        );
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
