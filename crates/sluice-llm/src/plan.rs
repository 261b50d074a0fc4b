//! Iteration-level scheduling as a pure function: before each decoding step, which waiting
//! requests join, and how many tokens each running sequence feeds to the model in that step.
//!
//! Rules (vLLM's, simplified):
//! - requests join first come, first served while there is a free sequence slot
//!   (`max_num_seqs`) and KV room for their whole answer (`kv_tokens`: the prompt plus
//!   `max_tokens` are reserved at admission, so a sequence never runs out of cache mid-answer
//!   and nothing is ever preempted);
//! - every sequence that is decoding feeds its one new token (they are waiting on it);
//! - prompts are fed in chunks with what is left of the step's token budget
//!   (`max_batched_tokens`), so a long prompt cannot stall the others' next tokens for long.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub max_num_seqs: usize,
    pub max_batched_tokens: usize,
    pub kv_tokens: usize,
}

/// A sequence in the running set.
#[derive(Clone, Copy, Debug)]
pub struct RunningSeq {
    /// Prompt tokens not yet fed (0: decoding).
    pub prompt_left: usize,
    /// KV tokens reserved for it.
    pub reserved: usize,
}

/// A request in the waiting queue.
#[derive(Clone, Copy, Debug)]
pub struct WaitingSeq {
    pub prompt: usize,
    /// Prompt plus `max_tokens`: the KV room it needs.
    pub reserve: usize,
}

#[derive(Debug, PartialEq)]
pub struct Step {
    /// How many requests from the front of the queue join now.
    pub admit: usize,
    /// Tokens to feed for each running sequence, then for each admitted one, in order.
    pub feed: Vec<usize>,
}

pub fn plan(running: &[RunningSeq], waiting: &[WaitingSeq], l: &Limits) -> Step {
    let mut reserved: usize = running.iter().map(|r| r.reserved).sum();
    let mut admit = 0;
    for w in waiting {
        if running.len() + admit >= l.max_num_seqs || reserved + w.reserve > l.kv_tokens {
            break;
        }
        reserved += w.reserve;
        admit += 1;
    }
    let prompts_left = running.iter().map(|r| r.prompt_left).chain(waiting[..admit].iter().map(|w| w.prompt));
    let decoding = running.iter().filter(|r| r.prompt_left == 0).count();
    let mut budget = l.max_batched_tokens.saturating_sub(decoding);
    let feed = prompts_left
        .map(|left| {
            if left == 0 {
                1
            } else {
                let n = left.min(budget);
                budget -= n;
                n
            }
        })
        .collect();
    Step { admit, feed }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { max_num_seqs: 4, max_batched_tokens: 64, kv_tokens: 1000 };

    fn decoding(reserved: usize) -> RunningSeq {
        RunningSeq { prompt_left: 0, reserved }
    }

    fn waiting(prompt: usize, max_tokens: usize) -> WaitingSeq {
        WaitingSeq { prompt, reserve: prompt + max_tokens }
    }

    #[test]
    fn new_requests_join_between_steps_up_to_the_slot_limit() {
        let s = plan(&[decoding(100), decoding(100)], &[waiting(10, 10), waiting(10, 10), waiting(10, 10)], &L);
        assert_eq!(s, Step { admit: 2, feed: vec![1, 1, 10, 10] });
    }

    #[test]
    fn admission_stops_at_the_kv_budget_and_keeps_order() {
        // 900 reserved: the first waiting needs 200 (too much), the second only 50, but it
        // must not overtake the first.
        let s = plan(&[decoding(900)], &[waiting(100, 100), waiting(25, 25)], &L);
        assert_eq!(s, Step { admit: 0, feed: vec![1] });
    }

    #[test]
    fn long_prompts_are_fed_in_chunks_after_the_decoders() {
        let running = [decoding(10), RunningSeq { prompt_left: 100, reserved: 200 }, decoding(10)];
        let s = plan(&running, &[waiting(50, 10)], &L);
        // 64 - 2 decoders = 62 for prompts: 62 to the first, nothing left for the newcomer.
        assert_eq!(s, Step { admit: 1, feed: vec![1, 62, 1, 0] });
    }

    #[test]
    fn nothing_runs_when_nothing_is_there() {
        assert_eq!(plan(&[], &[], &L), Step { admit: 0, feed: vec![] });
    }
}
