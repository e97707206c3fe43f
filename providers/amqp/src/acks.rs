//! Which `basic.ack` frames a channel may send for what committed.
//!
//! Deliveries settle (commit) in any order. A delivery may be acknowledged alone at any time
//! once committed; `multiple = true` on tag T acknowledges every delivery not yet acknowledged
//! up to T, so it is only sent when all of those committed, and T itself is still
//! unacknowledged (RabbitMQ closes the channel with `PRECONDITION_FAILED - unknown delivery
//! tag` otherwise). Everything that settled at once (the core commits in batches) is
//! acknowledged with one frame for the committed prefix and one per committed delivery behind
//! an uncommitted one. A delivery that is refused is never acknowledged: it holds the prefix
//! until the channel closes and the broker requeues it.

use std::collections::BTreeMap;

/// One `basic.ack` to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub tag: u64,
    pub multiple: bool,
}

/// The deliveries of one channel not acknowledged yet.
#[derive(Debug, Default)]
pub struct Acks {
    /// Delivery tag → whether it committed.
    outstanding: BTreeMap<u64, bool>,
}

impl Acks {
    pub fn new() -> Self {
        Self::default()
    }

    /// A delivery handed to the core.
    pub fn track(&mut self, tag: u64) {
        self.outstanding.insert(tag, false);
    }

    /// Its event committed: it may be acknowledged.
    pub fn commit(&mut self, tag: u64) {
        if let Some(committed) = self.outstanding.get_mut(&tag) {
            *committed = true;
        }
    }

    /// Unacknowledged deliveries (committed or not).
    pub fn len(&self) -> usize {
        self.outstanding.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// The acknowledgements to send now for what committed, fewest frames first; the tags
    /// they cover are no longer outstanding.
    pub fn take(&mut self) -> Vec<Ack> {
        let mut acks = Vec::new();
        let prefix: Vec<u64> = self
            .outstanding
            .iter()
            .take_while(|(_, committed)| **committed)
            .map(|(tag, _)| *tag)
            .collect();
        if let Some(&last) = prefix.last() {
            acks.push(Ack {
                tag: last,
                multiple: prefix.len() > 1,
            });
            for tag in &prefix {
                self.outstanding.remove(tag);
            }
        }
        let behind: Vec<u64> = self
            .outstanding
            .iter()
            .filter(|(_, committed)| **committed)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in behind {
            acks.push(Ack {
                tag,
                multiple: false,
            });
            self.outstanding.remove(&tag);
        }
        acks
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn single(tag: u64) -> Ack {
        Ack {
            tag,
            multiple: false,
        }
    }

    #[test]
    fn a_committed_prefix_is_one_multiple_ack() {
        let mut acks = Acks::new();
        for tag in 1..=5 {
            acks.track(tag);
        }
        for tag in [3, 1, 2] {
            acks.commit(tag);
        }
        assert_eq!(
            acks.take(),
            vec![Ack {
                tag: 3,
                multiple: true
            }]
        );
        assert_eq!(acks.len(), 2);
        assert_eq!(acks.take(), vec![], "nothing else committed");
        acks.commit(4);
        assert_eq!(acks.take(), vec![single(4)]);
    }

    #[test]
    fn commits_behind_an_uncommitted_delivery_are_acked_alone() {
        let mut acks = Acks::new();
        for tag in 1..=4 {
            acks.track(tag);
        }
        acks.commit(2);
        acks.commit(4);
        assert_eq!(acks.take(), vec![single(2), single(4)]);
        // 1 is refused: never acknowledged, whatever commits after it.
        acks.track(5);
        acks.commit(5);
        assert_eq!(acks.take(), vec![single(5)]);
        assert_eq!(acks.len(), 2, "1 and 3 stay for the broker to requeue");
        acks.commit(3);
        acks.commit(1);
        // 2 was acked alone: the multiple ack up to 3 covers only 1 and 3, both committed.
        assert_eq!(
            acks.take(),
            vec![Ack {
                tag: 3,
                multiple: true
            }]
        );
        assert!(acks.is_empty());
    }

    proptest::proptest! {
        /// Whatever the order of commits and flushes, every frame is valid for the broker
        /// (its tag unacknowledged, a multiple one covering only committed deliveries), nothing
        /// uncommitted is acknowledged, and everything committed is, exactly once.
        #[test]
        fn acks_are_always_valid(
            n in 1u64..40,
            order in proptest::collection::vec((0u64..40, proptest::bool::ANY), 0..80),
            refused in proptest::collection::btree_set(1u64..40, 0..5),
        ) {
            let mut acks = Acks::new();
            let mut unacked: BTreeSet<u64> = (1..=n).collect();
            let mut committed: BTreeSet<u64> = BTreeSet::new();
            let mut acked: BTreeSet<u64> = BTreeSet::new();
            for tag in 1..=n {
                acks.track(tag);
            }
            let apply = |frames: Vec<Ack>, unacked: &mut BTreeSet<u64>, committed: &BTreeSet<u64>, acked: &mut BTreeSet<u64>| {
                for a in frames {
                    assert!(unacked.contains(&a.tag), "{a:?}: unknown delivery tag");
                    let covered: Vec<u64> = if a.multiple {
                        unacked.range(..=a.tag).copied().collect()
                    } else {
                        vec![a.tag]
                    };
                    for t in covered {
                        assert!(committed.contains(&t), "{t} acknowledged before its commit");
                        unacked.remove(&t);
                        assert!(acked.insert(t), "{t} twice");
                    }
                }
            };
            for (tag, flush) in order {
                let tag = tag % n + 1;
                if !refused.contains(&tag) {
                    acks.commit(tag);
                    committed.insert(tag);
                }
                if flush {
                    apply(acks.take(), &mut unacked, &committed, &mut acked);
                }
            }
            apply(acks.take(), &mut unacked, &committed, &mut acked);
            proptest::prop_assert_eq!(&acked, &committed);
        }
    }
}
