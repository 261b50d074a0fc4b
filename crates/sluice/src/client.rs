//! What the client subcommands (`models`, `infer`, `generate`, `jobs`) share: the server's URL,
//! one HTTP client that turns the server's `{"error": ...}` into the error, and the exit codes.

use std::fmt;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Base URL of the server's HTTP endpoint.
    #[arg(long, global = true, env = "SLUICE_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
}

/// Why a client subcommand failed; the process exit code. Scripts branch on these, so they are
/// part of the interface (README, "Exit codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The server answered an error (its message is printed).
    Server = 1,
    /// The command line or a local input is wrong (clap's usage errors exit 2 too).
    Usage = 2,
    /// No answer: nothing listens at the URL, or the connection broke.
    Unreachable = 3,
    /// `jobs wait`: the job ended failed or cancelled.
    JobUnsuccessful = 4,
    /// `jobs wait`: the job had not ended when `--timeout` ran out.
    TimedOut = 5,
}

/// An error that carries its exit code; any other error exits [`Exit::Server`].
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

pub fn fail(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    Failure { exit, message: message.into() }.into()
}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    fail(Exit::Usage, message)
}

/// Ends a client command: on failure prints `error: <message>` and picks the exit code.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let exit = e.downcast_ref::<Failure>().map_or(Exit::Server, |f| f.exit);
            ExitCode::from(exit as u8)
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
}

/// A successful answer: the body as the server sent it, and parsed when it is JSON.
pub struct Answer {
    pub text: String,
    pub json: Value,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Client {
        Client { http: reqwest::Client::new(), base: args.url.trim_end_matches('/').to_string() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.send(self.http.get(self.url(path))).await?.json)
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        Ok(self.send(self.http.post(self.url(path)).json(body)).await?.json)
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.send(self.http.delete(self.url(path))).await?.json)
    }

    /// Sends the request and reads the whole answer; an error status becomes the error.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let resp = self.open(req).await?;
        let text = resp.text().await.map_err(|e| self.unreachable("reading the answer", &e))?;
        let json =
            if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::Null) };
        Ok(Answer { text, json })
    }

    /// Sends the request and returns the response with its body unread (for streams), or the
    /// server's error.
    pub async fn open(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            if e.is_builder() {
                usage(format!("cannot make a request of --url {}: {}", self.base, chain(&e)))
            } else {
                self.unreachable("cannot reach the server", &e)
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.with_context(|| format!("reading the answer from {}", self.base))?;
        Err(anyhow::anyhow!("{}", server_error(status.as_u16(), &text)))
    }

    fn unreachable(&self, what: &str, e: &reqwest::Error) -> anyhow::Error {
        fail(Exit::Unreachable, format!("{what} at {}: {}", self.base, chain(e)))
    }
}

/// reqwest's own message says only "error sending request"; the reason is in its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !msg.contains(&part) {
            msg.push_str(": ");
            msg.push_str(&part);
        }
        source = s.source();
    }
    msg
}

/// The server's message from an error body: V2's `{"error": "..."}`, OpenAI's
/// `{"error": {"message": "..."}}`, else the body itself.
pub fn server_error(status: u16, body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    match error_message(&v) {
        Some(msg) => format!("{msg} (HTTP {status})"),
        None if body.trim().is_empty() => format!("the server answered HTTP {status}"),
        None => format!("the server answered HTTP {status}: {}", body.trim()),
    }
}

pub fn error_message(v: &Value) -> Option<&str> {
    let e = v.get("error")?;
    e.as_str().or_else(|| e.get("message").and_then(Value::as_str))
}

pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_both_shapes_give_the_message() {
        assert_eq!(server_error(404, r#"{"error":"unknown model 'x'"}"#), "unknown model 'x' (HTTP 404)");
        assert_eq!(
            server_error(400, r#"{"error":{"message":"'model' is required","type":"invalid_request_error"}}"#),
            "'model' is required (HTTP 400)"
        );
        assert_eq!(server_error(502, "Bad Gateway"), "the server answered HTTP 502: Bad Gateway");
        assert_eq!(server_error(500, ""), "the server answered HTTP 500");
    }

    #[test]
    fn failures_carry_their_exit_code() {
        assert_eq!(finish(Ok(())), ExitCode::SUCCESS);
        assert_eq!(finish(Err(usage("bad"))), ExitCode::from(2));
        assert_eq!(finish(Err(fail(Exit::TimedOut, "late"))), ExitCode::from(5));
        assert_eq!(finish(Err(anyhow::anyhow!("the server said no"))), ExitCode::from(1));
        // Context added on the way up keeps the code.
        assert_eq!(finish(Err(fail(Exit::Unreachable, "down").context("listing"))), ExitCode::from(3));
    }
}
