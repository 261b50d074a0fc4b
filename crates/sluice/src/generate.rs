//! `sluice generate`: text from a generative model, printed piece by piece as the server streams
//! it (Triton's `generate_stream`, or `/v1/chat/completions` with `--chat`, both Server-Sent
//! Events).

use std::io::Write as _;

use anyhow::bail;
use clap::Args;
use serde_json::{json, Value};

use crate::client::{error_message, fail, Client, ClientArgs, Exit};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Model name.
    pub name: String,
    /// The prompt: sent as it is, or as the user's message with --chat.
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// Sampling temperature (0: always the most likely token; default: the server's).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Send the prompt as a chat message through /v1/chat/completions, so the model's chat
    /// template wraps it (what instruction-tuned models expect).
    #[arg(long)]
    pub chat: bool,
    /// Model version (not with --chat).
    #[arg(long, conflicts_with = "chat")]
    pub version: Option<String>,
}

pub async fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client);
    let (path, body) = if args.chat {
        let mut body = json!({
            "model": args.name,
            "messages": [{ "role": "user", "content": args.prompt }],
            "max_tokens": args.max_tokens,
            "stream": true,
        });
        if let Some(t) = args.temperature {
            body["temperature"] = json!(t);
        }
        ("/v1/chat/completions".to_string(), body)
    } else {
        let mut params = json!({ "max_tokens": args.max_tokens });
        if let Some(t) = args.temperature {
            params["temperature"] = json!(t);
        }
        let model = match &args.version {
            Some(v) => format!("/v2/models/{}/versions/{v}", args.name),
            None => format!("/v2/models/{}", args.name),
        };
        (format!("{model}/generate_stream"), json!({ "text_input": args.prompt, "parameters": params }))
    };
    let mut resp = client.open(client.http().post(client.url(&path)).json(&body)).await?;
    let mut parser = SseParser::default();
    let mut out = Printer::default();
    let result = async {
        loop {
            let chunk =
                resp.chunk().await.map_err(|e| fail(Exit::Unreachable, format!("the stream broke off: {e}")))?;
            let Some(chunk) = chunk else { break };
            for event in parser.push(&chunk) {
                match piece(&event, args.chat)? {
                    Piece::Text(t) => out.print(&t)?,
                    Piece::Finished(reason) => {
                        out.end()?;
                        if reason == "length" {
                            eprintln!("(stopped at --max-tokens {})", args.max_tokens);
                        }
                    }
                    Piece::Done => return Ok(()),
                    Piece::Nothing => {}
                }
            }
        }
        if args.chat {
            bail!("the stream ended before its end marker (data: [DONE])");
        }
        Ok(())
    }
    .await;
    out.end()?;
    result
}

/// Text on stdout as it comes, flushed per piece, ending with a newline.
#[derive(Default)]
struct Printer {
    open: bool,
    ends_in_newline: bool,
}

impl Printer {
    fn print(&mut self, text: &str) -> std::io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        self.open = true;
        self.ends_in_newline = text.ends_with('\n');
        Ok(())
    }

    fn end(&mut self) -> std::io::Result<()> {
        if self.open && !self.ends_in_newline {
            println!();
        }
        self.open = false;
        Ok(())
    }
}

/// What one event of either stream means.
#[derive(Debug, PartialEq)]
enum Piece {
    Text(String),
    /// The chat stream's finish reason (`stop`, `length`).
    Finished(String),
    /// The chat stream's `[DONE]`.
    Done,
    Nothing,
}

fn piece(e: &SseEvent, chat: bool) -> anyhow::Result<Piece> {
    if chat && e.data.trim() == "[DONE]" {
        return Ok(Piece::Done);
    }
    let v: Value = serde_json::from_str(&e.data)
        .map_err(|err| anyhow::anyhow!("the server sent an event that is not JSON ({err}): {}", e.data))?;
    if e.event.as_deref() == Some("error") || v.get("error").is_some() {
        bail!("generation failed: {}", error_message(&v).unwrap_or(&e.data));
    }
    if !chat {
        return Ok(v.get("text_output").and_then(Value::as_str).map_or(Piece::Nothing, |t| Piece::Text(t.into())));
    }
    let choice = &v["choices"][0];
    if let Some(t) = choice["delta"]["content"].as_str() {
        return Ok(Piece::Text(t.into()));
    }
    Ok(choice["finish_reason"].as_str().map_or(Piece::Nothing, |r| Piece::Finished(r.into())))
}

/// One Server-Sent Event.
#[derive(Debug, PartialEq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Splits a byte stream into Server-Sent Events, whatever the chunk boundaries.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        // CR LF and LF end lines alike; a CR inside data would be escaped in the JSON we read.
        self.buf.extend(chunk.iter().copied().filter(|&b| b != b'\r'));
        let mut events = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            if let Some(e) = Self::event(&String::from_utf8_lossy(&block)) {
                events.push(e);
            }
        }
        events
    }

    fn event(block: &str) -> Option<SseEvent> {
        let (mut event, mut data): (Option<String>, Option<String>) = (None, None);
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = Some(value.to_string()),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                // Comments (keep-alives), `id`, `retry`.
                _ => {}
            }
        }
        data.map(|data| SseEvent { event, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_any_chunking() {
        let stream = b"data: {\"text_output\":\"Hel\"}\n\n: keep-alive\n\ndata: {\"text_output\":\"lo \xc3\xa9\"}\r\n\r\nevent: error\ndata: {\"error\":\"boom\"}\n\n";
        let whole = SseParser::default().push(stream);
        assert_eq!(whole.len(), 3, "{whole:?}");
        assert_eq!(whole[1].data, "{\"text_output\":\"lo é\"}");
        assert_eq!(whole[2], SseEvent { event: Some("error".into()), data: "{\"error\":\"boom\"}".into() });
        for size in 1..stream.len() {
            let mut p = SseParser::default();
            let got: Vec<SseEvent> = stream.chunks(size).flat_map(|c| p.push(c)).collect();
            assert_eq!(got, whole, "chunks of {size}");
        }
    }

    #[test]
    fn multi_line_data_is_joined() {
        let e = SseParser::default().push(b"data: a\ndata: b\n\n");
        assert_eq!(e[0].data, "a\nb");
    }

    #[test]
    fn pieces_of_both_streams() {
        let ev = |event: Option<&str>, data: &str| SseEvent { event: event.map(Into::into), data: data.into() };
        assert_eq!(piece(&ev(None, r#"{"text_output":"Hi"}"#), false).unwrap(), Piece::Text("Hi".into()));
        let e = piece(&ev(Some("error"), r#"{"error":"out of memory"}"#), false).unwrap_err().to_string();
        assert_eq!(e, "generation failed: out of memory");
        let chunk = r#"{"choices":[{"index":0,"delta":{"content":"Paris"},"finish_reason":null}]}"#;
        assert_eq!(piece(&ev(None, chunk), true).unwrap(), Piece::Text("Paris".into()));
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}"#;
        assert_eq!(piece(&ev(None, role), true).unwrap(), Piece::Nothing);
        let end = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;
        assert_eq!(piece(&ev(None, end), true).unwrap(), Piece::Finished("length".into()));
        assert_eq!(piece(&ev(None, "[DONE]"), true).unwrap(), Piece::Done);
        let err = r#"{"error":{"message":"engine stopped","type":"server_error"}}"#;
        assert_eq!(piece(&ev(None, err), true).unwrap_err().to_string(), "generation failed: engine stopped");
        assert!(piece(&ev(None, "nope"), false).unwrap_err().to_string().contains("not JSON"));
    }
}
