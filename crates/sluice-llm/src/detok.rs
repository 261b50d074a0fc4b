//! Turning a growing list of token ids into text pieces as they come: never half a UTF-8
//! character (byte-level tokens split characters across tokens), never a piece of a stop
//! sequence (the text is held back while it could still become one).

/// Decodes token ids into text (special tokens left out).
pub trait Decode {
    fn decode(&self, ids: &[u32]) -> String;
}

impl Decode for tokenizers::Tokenizer {
    fn decode(&self, ids: &[u32]) -> String {
        // The inherent `decode` of the tokenizer behind the `Deref`, not this trait's.
        (**self).decode(ids, true).unwrap_or_default()
    }
}

/// A tokenizer as a [`sluice_types::generation::Vocabulary`].
pub struct TokenizerVocabulary(pub std::sync::Arc<tokenizers::Tokenizer>);

impl sluice_types::generation::Vocabulary for TokenizerVocabulary {
    fn decode(&self, ids: &[u32], special: bool) -> String {
        // The tokenizer's inherent `decode`, behind its `Deref`, not [`Decode`]'s.
        let t: &tokenizers::Tokenizer = &self.0;
        (**t).decode(ids, !special).unwrap_or_default()
    }
}

/// Any vocabulary, decoding as [`Decode`] wants: special tokens dropped.
pub struct Plain<'a>(pub &'a dyn sluice_types::generation::Vocabulary);

impl Decode for Plain<'_> {
    fn decode(&self, ids: &[u32]) -> String {
        self.0.decode(ids, false)
    }
}

/// Any vocabulary, special tokens kept (see [`WithSpecial`]).
pub struct Special<'a>(pub &'a dyn sluice_types::generation::Vocabulary);

impl Decode for Special<'_> {
    fn decode(&self, ids: &[u32]) -> String {
        self.0.decode(ids, true)
    }
}

/// Decodes with special tokens kept: a prompt's `<|im_start|>` is part of its text, and a
/// token shown on its own (a log-probability's alternative) should read as itself.
pub struct WithSpecial<'a>(pub &'a tokenizers::Tokenizer);

impl Decode for WithSpecial<'_> {
    fn decode(&self, ids: &[u32]) -> String {
        (**self.0).decode(ids, false).unwrap_or_default()
    }
}

/// Incremental detokenization: decodes a window of recent tokens and emits what the newest
/// token added, once it is complete text. Decoding a window rather than the token alone keeps
/// what tokenizers do across token boundaries (leading spaces, merged bytes).
#[derive(Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    /// Adds a token; returns the text it completes (empty while a character is incomplete).
    pub fn push(&mut self, d: &impl Decode, id: u32) -> String {
        self.ids.push(id);
        let prefix = d.decode(&self.ids[self.prefix_offset..self.read_offset]);
        let full = d.decode(&self.ids[self.prefix_offset..]);
        if full.ends_with('\u{FFFD}') || full.len() <= prefix.len() {
            return String::new();
        }
        let piece = match full.get(prefix.len()..) {
            Some(p) if full.starts_with(&prefix) => p.to_string(),
            // The window re-decoded differently: emit the part past the common prefix.
            _ => {
                let common = prefix.char_indices().zip(full.chars()).take_while(|((_, a), b)| a == b).count();
                full.chars().skip(common).collect()
            }
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        piece
    }
}

/// Holds back text that could be the start of a stop sequence; finds the stop when it comes.
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What a new piece of text yields.
#[derive(Debug, PartialEq)]
pub enum Matched {
    /// Text that can be sent now (maybe empty).
    Text(String),
    /// A stop sequence was found: the text before it, then the answer ends.
    Stop(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher { stops, held: String::new() }
    }

    pub fn push(&mut self, piece: &str) -> Matched {
        if self.stops.is_empty() {
            return Matched::Text(piece.to_string());
        }
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let before = self.held[..at].to_string();
            self.held.clear();
            return Matched::Stop(before);
        }
        // Keep the longest tail that is a prefix of some stop sequence.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_string();
        self.held.drain(..keep);
        Matched::Text(out)
    }

    /// The held-back text, when the answer ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each id is one byte: characters of several bytes span several tokens.
    struct Bytes;
    impl Decode for Bytes {
        fn decode(&self, ids: &[u32]) -> String {
            String::from_utf8_lossy(&ids.iter().map(|&i| i as u8).collect::<Vec<_>>()).into_owned()
        }
    }

    #[test]
    fn multibyte_characters_come_out_whole() {
        let text = "héllo → 世界!";
        let mut d = Detokenizer::default();
        let mut pieces = Vec::new();
        for b in text.bytes() {
            let p = d.push(&Bytes, b as u32);
            assert!(!p.contains('\u{FFFD}'), "half a character in {p:?}");
            pieces.push(p);
        }
        assert_eq!(pieces.concat(), text);
        // The three bytes of '世' give nothing, nothing, then the character.
        let i = text.find('世').unwrap();
        assert_eq!(pieces[i..i + 3], ["".to_string(), "".to_string(), "世".to_string()]);
    }

    #[test]
    fn stop_sequence_is_cut_and_never_sent_in_part() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
        assert_eq!(m.push("Hello"), Matched::Text("Hello".into()));
        assert_eq!(m.push(" there\n"), Matched::Text(" there".into()));
        assert_eq!(m.push("\nUs"), Matched::Text("".into()));
        assert_eq!(m.push("er: next"), Matched::Stop("".into()));
    }

    #[test]
    fn held_text_that_does_not_become_a_stop_is_released() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("the E"), Matched::Text("the ".into()));
        assert_eq!(m.push("N"), Matched::Text("".into()));
        assert_eq!(m.push("D"), Matched::Stop("".into()));
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN"), Matched::Text("".into()));
        assert_eq!(m.push("ough"), Matched::Text("ENough".into()));
        assert_eq!(m.push("E"), Matched::Text("".into()));
        assert_eq!(m.flush(), "E");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let mut m = StopMatcher::new(vec!["b".into(), "xa".into()]);
        assert_eq!(m.push("1xab"), Matched::Stop("1".into()));
    }
}
