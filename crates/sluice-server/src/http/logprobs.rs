//! Log-probabilities in OpenAI's shapes: the legacy Completions object (`tokens`,
//! `token_logprobs`, `top_logprobs`, `text_offset`) and the chat `content` list.
//!
//! A token's text is what it adds to the answer, decoded in context: byte-level tokens can
//! split a character, and such a token reads as "" while the one that completes it carries the
//! whole character. So the `tokens` of an answer join to its text exactly, and `text_offset`
//! (in characters, as Python counts them) points into it. Prompt tokens are decoded with
//! special tokens kept (the echoed prompt holds its `<|im_start|>`), generated ones without (the
//! answer never holds an end-of-sequence marker; that token reads as ""). Alternatives in
//! `top_logprobs` are decoded on their own.

use serde_json::{json, Map, Value};
use sluice_llm::detok::{Decode, Detokenizer};
use sluice_llm::TokenLogprob;

/// JSON has no -inf; OpenAI and vLLM send this floor instead.
const FLOOR: f64 = -9999.0;

fn finite(lp: f32) -> f64 {
    let lp = lp as f64;
    if lp.is_nan() {
        FLOOR
    } else {
        lp.max(FLOOR)
    }
}

/// The legacy Completions `logprobs` of some tokens; the parts of one answer append.
#[derive(Debug, Default, PartialEq)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f64>>,
    pub top_logprobs: Vec<Option<Map<String, Value>>>,
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    pub fn append(&mut self, mut other: CompletionLogprobs) {
        self.tokens.append(&mut other.tokens);
        self.token_logprobs.append(&mut other.token_logprobs);
        self.top_logprobs.append(&mut other.top_logprobs);
        self.text_offset.append(&mut other.text_offset);
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}

/// Turns one answer's scored tokens into OpenAI's shapes as they come: keeps the tokens before
/// (a token's text depends on them) and the text offset reached.
#[derive(Default)]
pub struct LogprobText {
    prompt: Detokenizer,
    generated: Detokenizer,
    offset: usize,
}

impl LogprobText {
    /// The prompt's tokens: the first, which nothing predicts (`null`), then the scored rest.
    /// `raw` decodes with special tokens kept.
    pub fn prompt(&mut self, raw: &impl Decode, first: u32, scores: &[TokenLogprob]) -> CompletionLogprobs {
        let mut out = CompletionLogprobs::default();
        let piece = self.prompt.push(raw, first);
        self.push(&mut out, piece, None, raw);
        for s in scores {
            let piece = self.prompt.push(raw, s.token);
            self.push(&mut out, piece, Some(s), raw);
        }
        out
    }

    /// Generated tokens. `text` decodes as the answer's text does (special tokens left out).
    pub fn generated(&mut self, text: &impl Decode, raw: &impl Decode, scores: &[TokenLogprob]) -> CompletionLogprobs {
        let mut out = CompletionLogprobs::default();
        for s in scores {
            let piece = self.generated.push(text, s.token);
            self.push(&mut out, piece, Some(s), raw);
        }
        out
    }

    /// Generated tokens as the chat API lists them: each with its UTF-8 bytes and the `top`
    /// most likely alternatives (the chosen one is not added to them).
    pub fn chat(&mut self, text: &impl Decode, raw: &impl Decode, scores: &[TokenLogprob]) -> Vec<Value> {
        let entry = |token: String, lp: f32| {
            let bytes = token.as_bytes().to_vec();
            json!({ "token": token, "logprob": finite(lp), "bytes": bytes })
        };
        scores
            .iter()
            .map(|s| {
                let piece = self.generated.push(text, s.token);
                self.offset += piece.chars().count();
                let top: Vec<Value> = s.top.iter().map(|&(id, lp)| entry(raw.decode(&[id]), lp)).collect();
                let mut v = entry(piece, s.logprob);
                v["top_logprobs"] = Value::Array(top);
                v
            })
            .collect()
    }

    fn push(&mut self, out: &mut CompletionLogprobs, piece: String, score: Option<&TokenLogprob>, raw: &impl Decode) {
        out.text_offset.push(self.offset);
        self.offset += piece.chars().count();
        out.token_logprobs.push(score.map(|s| finite(s.logprob)));
        out.top_logprobs.push(score.map(|s| top_map(&piece, s, raw)));
        out.tokens.push(piece);
    }
}

/// `{token text: logprob}` of the chosen token (under the text it has in `tokens`, so a client
/// can look it up) and the most likely alternatives. Texts that several tokens share keep the
/// first (the chosen one, then the likelier).
fn top_map(piece: &str, s: &TokenLogprob, raw: &impl Decode) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(piece.to_string(), json!(finite(s.logprob)));
    for &(id, lp) in &s.top {
        if id != s.token {
            m.entry(raw.decode(&[id])).or_insert_with(|| json!(finite(lp)));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids below 256 are single bytes (so characters can span tokens); 1000 is a special
    /// marker that only `Raw` shows.
    struct Text;
    struct Raw;
    fn bytes(ids: &[u32], special: bool) -> String {
        let mut out = Vec::new();
        for &i in ids {
            match i {
                1000 if special => out.extend_from_slice(b"<|end|>"),
                1000 => {}
                b => out.push(b as u8),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    impl Decode for Text {
        fn decode(&self, ids: &[u32]) -> String {
            bytes(ids, false)
        }
    }
    impl Decode for Raw {
        fn decode(&self, ids: &[u32]) -> String {
            bytes(ids, true)
        }
    }

    fn scored(token: u32, logprob: f32, top: &[(u32, f32)]) -> TokenLogprob {
        TokenLogprob { token, logprob, top: top.to_vec() }
    }

    #[test]
    fn the_prompt_starts_unscored_and_offsets_count_characters() {
        let mut t = LogprobText::default();
        let p = t.prompt(&Raw, 1000, &[scored(b'h' as u32, -1.0, &[]), scored(b'i' as u32, -0.5, &[])]);
        assert_eq!(p.tokens, ["<|end|>", "h", "i"]);
        assert_eq!(p.token_logprobs, [None, Some(-1.0), Some(-0.5)]);
        assert!(p.top_logprobs[0].is_none());
        assert_eq!(p.text_offset, [0, 7, 8]);
        // "é" is two bytes, two tokens: the first reads "", the second carries the character,
        // and the offsets go on in characters.
        let g = t.generated(
            &Text,
            &Raw,
            &[
                scored(0xC3, -0.1, &[]),
                scored(0xA9, -0.2, &[]),
                scored(b'!' as u32, -0.3, &[]),
                scored(1000, -0.4, &[]),
            ],
        );
        assert_eq!(g.tokens, ["", "é", "!", ""]);
        assert_eq!(g.text_offset, [9, 9, 10, 11]);
        assert_eq!(p.tokens.concat() + &g.tokens.concat(), "<|end|>hié!");
    }

    #[test]
    fn top_logprobs_hold_the_chosen_token_and_the_alternatives() {
        let mut t = LogprobText::default();
        // Chosen 'b' is the second most likely; 'a' leads.
        let g = t.generated(&Text, &Raw, &[scored(b'b' as u32, -1.2, &[(b'a' as u32, -0.4), (b'b' as u32, -1.2)])]);
        let top = g.top_logprobs[0].as_ref().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top["a"], json!(-0.4f32 as f64));
        assert_eq!(top["b"], json!(-1.2f32 as f64));
        // Chosen outside the top 1: both are there (logprobs=1 gives up to 2 entries).
        let g = t.generated(&Text, &Raw, &[scored(b'z' as u32, -7.0, &[(b'a' as u32, -0.1)])]);
        assert_eq!(g.top_logprobs[0].as_ref().unwrap().len(), 2);
        // The special marker shows as itself among the alternatives.
        let g = t.generated(&Text, &Raw, &[scored(b'.' as u32, -2.0, &[(1000, -0.2)])]);
        assert!(g.top_logprobs[0].as_ref().unwrap().contains_key("<|end|>"));
    }

    #[test]
    fn minus_infinity_becomes_the_floor() {
        let mut t = LogprobText::default();
        let g = t.generated(&Text, &Raw, &[scored(b'a' as u32, f32::NEG_INFINITY, &[(b'b' as u32, f32::NAN)])]);
        assert_eq!(g.token_logprobs, [Some(FLOOR)]);
        assert_eq!(g.top_logprobs[0].as_ref().unwrap()["b"], json!(FLOOR));
    }

    #[test]
    fn chat_entries_carry_bytes_and_the_alternatives_only() {
        let mut t = LogprobText::default();
        let c = t.chat(&Text, &Raw, &[scored(0xC3, -0.1, &[(0xC3, -0.1)]), scored(0xA9, -0.2, &[])]);
        assert_eq!(c[0]["token"], "");
        assert_eq!(c[1]["token"], "é");
        assert_eq!(c[1]["bytes"], json!([0xC3, 0xA9]));
        assert_eq!(c[0]["top_logprobs"].as_array().unwrap().len(), 1);
    }
}
