//! The watermark, committed with the events: where a restarted trigger resumes, and the dedup
//! key of a row.
//!
//! A row's position is its *key*: the watched column's value followed by the table's primary
//! key columns (those that are not the watched column), each as the database's text form. Rows
//! are read in key order, after the last key acknowledged.
//!
//! Each event of a batch carries the checkpoint `slot.{i}` (its position in the batch) =
//! `{"b": batch, "from": key the batch started after, "at": this row's key}`. The core commits
//! it in the event's transaction, so the committed slots say which rows of the latest batch
//! committed; the trigger resumes after the last row of the longest committed prefix of the
//! latest batch (or from where that batch started), so a row is acknowledged only once it and
//! every row before it committed. At most `batch_size` slots exist per trigger.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A row's position: the column's value, then its primary key values, as text.
pub type Key = Vec<String>;

/// The prefix of a checkpoint key.
const SLOT: &str = "slot.";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    b: u64,
    from: Option<Key>,
    at: Key,
}

/// Where a (re)started trigger begins: the number of the last batch, and the key after which
/// rows are new (`None`: from the table's first row).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resume {
    pub batch: u64,
    pub after: Option<Key>,
}

/// The committed checkpoint's resume point. Pairs that are no slot, or do not parse, are
/// ignored.
pub fn resume(checkpoint: &HashMap<String, String>) -> Resume {
    let mut slots: HashMap<usize, Slot> = HashMap::new();
    for (key, value) in checkpoint {
        let Some(i) = key.strip_prefix(SLOT).and_then(|i| i.parse::<usize>().ok()) else {
            continue;
        };
        if let Ok(slot) = serde_json::from_str::<Slot>(value) {
            slots.insert(i, slot);
        }
    }
    let Some(latest) = slots.values().map(|s| s.b).max() else {
        return Resume::default();
    };
    let mut after = None;
    let mut from = None;
    for i in 0.. {
        match slots.get(&i) {
            Some(slot) if slot.b == latest => {
                from.get_or_insert_with(|| slot.from.clone());
                after = Some(slot.at.clone());
            }
            _ => break,
        }
    }
    Resume {
        batch: latest,
        after: match after {
            Some(at) => Some(at),
            // Not even the batch's first row committed: from where the batch started, which
            // every slot of it records.
            None => slots
                .values()
                .find(|s| s.b == latest)
                .and_then(|s| s.from.clone()),
        },
    }
}

/// The checkpoint pair of the row at `index` of batch `batch`, which started after `from`.
pub fn slot(batch: u64, index: usize, from: &Option<Key>, at: &Key) -> (String, String) {
    let value = serde_json::to_string(&Slot {
        b: batch,
        from: from.clone(),
        at: at.clone(),
    })
    .unwrap_or_default();
    (format!("{SLOT}{index}"), value)
}

/// `sql:{label}/{table}/{column}={value}`, then `,{pk}={value}` for each primary key column
/// (`names[1..]`), or, for a table without one, `#{digest of the row}.{n}` (the `n`th row
/// with that value and content in its batch: rows sharing a value are always read together).
pub fn dedup_key(
    label: &str,
    table: &str,
    names: &[String],
    key: &Key,
    no_pk: Option<(&str, usize)>,
) -> String {
    let mut out = format!("sql:{label}/{table}");
    for (i, (name, value)) in names.iter().zip(key).enumerate() {
        out.push(if i == 0 { '/' } else { ',' });
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    if let Some((row, n)) = no_pk {
        out.push_str(&format!("#{:016x}.{n}", fnv1a(row.as_bytes())));
    }
    out
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike the standard hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: &str) -> Key {
        vec![v.to_string()]
    }

    fn committed(pairs: &[(String, String)]) -> HashMap<String, String> {
        pairs.iter().cloned().collect()
    }

    #[test]
    fn nothing_committed_starts_from_the_first_row() {
        assert_eq!(resume(&HashMap::new()), Resume::default());
        let junk = committed(&[("other".into(), "x".into()), ("slot.0".into(), "{".into())]);
        assert_eq!(resume(&junk), Resume::default());
    }

    #[test]
    fn a_whole_batch_resumes_after_its_last_row() {
        let from = Some(key("3"));
        let pairs: Vec<_> = ["4", "5", "6"]
            .iter()
            .enumerate()
            .map(|(i, v)| slot(7, i, &from, &key(v)))
            .collect();
        assert_eq!(
            resume(&committed(&pairs)),
            Resume {
                batch: 7,
                after: Some(key("6"))
            }
        );
    }

    #[test]
    fn only_the_committed_prefix_counts() {
        let from = Some(key("3"));
        // Rows 0 and 2 committed, row 1 not: resume after row 0.
        let pairs = vec![slot(2, 0, &from, &key("4")), slot(2, 2, &from, &key("6"))];
        assert_eq!(resume(&committed(&pairs)).after, Some(key("4")));
        // Row 0 not committed: from where the batch started.
        let pairs = vec![slot(2, 1, &from, &key("5"))];
        assert_eq!(resume(&committed(&pairs)).after, from);
        // A longer earlier batch's slots are older, not part of the prefix.
        let old = Some(key("0"));
        let pairs = vec![
            slot(1, 0, &old, &key("1")),
            slot(1, 1, &old, &key("2")),
            slot(1, 2, &old, &key("3")),
            slot(2, 0, &from, &key("4")),
        ];
        assert_eq!(
            resume(&committed(&pairs)),
            Resume {
                batch: 2,
                after: Some(key("4"))
            }
        );
    }

    #[test]
    fn dedup_keys_name_the_row() {
        let names = vec!["created_at".to_string(), "id".to_string()];
        let k = vec!["2024-01-01 00:00:00+00".to_string(), "7".to_string()];
        assert_eq!(
            dedup_key("h:5432/db", "public.t", &names, &k, None),
            "sql:h:5432/db/public.t/created_at=2024-01-01 00:00:00+00,id=7"
        );
        let one = vec!["id".to_string()];
        assert_eq!(
            dedup_key("h/db", "t", &one, &key("7"), None),
            "sql:h/db/t/id=7"
        );
        // Without a primary key: the row's content and its rank among identical ones.
        let a = dedup_key("h/db", "t", &one, &key("7"), Some((r#"{"id":7,"x":1}"#, 0)));
        let b = dedup_key("h/db", "t", &one, &key("7"), Some((r#"{"id":7,"x":2}"#, 0)));
        let a1 = dedup_key("h/db", "t", &one, &key("7"), Some((r#"{"id":7,"x":1}"#, 1)));
        assert!(a.starts_with("sql:h/db/t/id=7#"));
        assert_ne!(a, b);
        assert_ne!(a, a1);
        assert_eq!(
            a,
            dedup_key("h/db", "t", &one, &key("7"), Some((r#"{"id":7,"x":1}"#, 0)))
        );
    }
}
