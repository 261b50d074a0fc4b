//! `preserve_ordering`: answers leave in the order their requests were queued, whatever order
//! the instances (or priorities, or timeouts) finish them in. A plain struct; the runner feeds
//! it each request's sequence number when that request is answered.

use std::collections::BTreeMap;

/// Holds answers that are ready before an earlier request's.
#[derive(Debug)]
pub struct Reorder<T> {
    next: u64,
    held: BTreeMap<u64, Option<T>>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder { next: 0, held: BTreeMap::new() }
    }
}

impl<T> Reorder<T> {
    /// Request `seq` is answered with `answer` (`None`: its caller went away, nothing to send).
    /// Returns what may be sent now, in order.
    pub fn release(&mut self, seq: u64, answer: Option<T>) -> Vec<T> {
        self.held.insert(seq, answer);
        let mut out = Vec::new();
        while let Some(answer) = self.held.remove(&self.next) {
            out.extend(answer);
            self.next += 1;
        }
        out
    }

    /// Answers held back, waiting for an earlier request.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_answers_pass_straight_through() {
        let mut r = Reorder::default();
        assert_eq!(r.release(0, Some("a")), vec!["a"]);
        assert_eq!(r.release(1, Some("b")), vec!["b"]);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_later_answer_waits_for_the_earlier_ones() {
        let mut r = Reorder::default();
        assert!(r.release(2, Some("c")).is_empty());
        assert!(r.release(1, Some("b")).is_empty());
        assert_eq!(r.held(), 2);
        assert_eq!(r.release(0, Some("a")), vec!["a", "b", "c"]);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_cancelled_request_does_not_block_the_ones_after_it() {
        let mut r = Reorder::default();
        assert!(r.release(1, Some("b")).is_empty());
        assert_eq!(r.release(0, None), vec!["b"]);
        assert_eq!(r.release(2, Some("c")), vec!["c"]);
    }
}
