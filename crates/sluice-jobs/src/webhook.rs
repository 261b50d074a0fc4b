//! Webhooks: the finished job POSTed to its `callback_url`, signed as Standard Webhooks do
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`), retried with exponential backoff and jitter on network errors and
//! 5xx answers. Callback targets are checked when the job is submitted: only http(s), only hosts
//! in the allowlist when it is set, never a private, loopback or link-local address unless its
//! host is allowed explicitly.

use std::net::IpAddr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use sluice_types::ServeError;

use crate::record::{now_ms, Delivery, JobRecord};

/// The secret that signs webhooks (`whsec_` + base64 of the key, as Standard Webhooks writes it).
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    pub fn from_secret(secret: &str) -> Result<Signer, String> {
        let key = match secret.strip_prefix("whsec_") {
            Some(b64) => {
                B64.decode(b64).map_err(|e| format!("webhook secret: whsec_ must be followed by base64: {e}"))?
            }
            None => secret.as_bytes().to_vec(),
        };
        if key.len() < 16 {
            return Err("webhook secret: at least 16 bytes of key are needed".into());
        }
        Ok(Signer { key })
    }

    /// A new random secret, in `whsec_` form.
    pub fn generate() -> String {
        let key: [u8; 32] = rand::rng().random();
        format!("whsec_{}", B64.encode(key))
    }

    /// The `webhook-signature` value for a message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }
}

#[derive(Clone)]
pub struct WebhookConfig {
    pub signer: Signer,
    /// Hosts callbacks may go to (host names or IP addresses); empty = any public host.
    pub allow: Vec<String>,
    /// Attempts per webhook, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time (with ±25 % jitter), at most 5 minutes.
    pub backoff: Duration,
    pub timeout: Duration,
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // carrier-grade NAT
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

impl WebhookConfig {
    /// Checks a callback URL at submit time.
    pub async fn check(&self, url: &str) -> Result<(), ServeError> {
        let bad = |why: String| ServeError::invalid(format!("callback_url '{url}': {why}"));
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(format!("not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad(format!("scheme must be http or https, not {}", parsed.scheme())));
        }
        let host = parsed.host_str().ok_or_else(|| bad("no host".into()))?.trim_matches(['[', ']']).to_string();
        let allowed = self.allow.iter().any(|a| a.eq_ignore_ascii_case(&host));
        if allowed {
            return Ok(());
        }
        if !self.allow.is_empty() {
            return Err(bad(format!("host {host} is not in the webhook allowlist (--webhook-allow)")));
        }
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| bad(format!("cannot resolve {host}: {e}")))?
                .map(|a| a.ip())
                .collect(),
        };
        if let Some(ip) = addrs.into_iter().find(|ip| is_private(*ip)) {
            return Err(bad(format!(
                "host {host} is a private or loopback address ({ip}); allow it with --webhook-allow {host}"
            )));
        }
        Ok(())
    }

    fn delay(&self, retry: u32) -> Duration {
        let base = self.backoff.as_secs_f64() * 2f64.powi(retry.min(20) as i32);
        let jitter = rand::rng().random_range(0.75..1.25);
        Duration::from_secs_f64((base * jitter).min(300.0))
    }
}

/// What happened to a delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// The receiver answered 4xx: retrying will not help.
    Rejected,
    /// Every attempt failed.
    GaveUp,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Rejected => "rejected",
            Outcome::GaveUp => "failed",
        }
    }
}

/// Delivers a finished job's webhook, calling `record` with the attempts so far after each one
/// (and whether delivery is still due). Starts after the attempts the job already records.
pub async fn deliver<F, Fut>(client: &reqwest::Client, cfg: &WebhookConfig, job: &JobRecord, mut record: F) -> Outcome
where
    F: FnMut(Vec<Delivery>, bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(url) = job.callback_url.clone() else { return Outcome::Delivered };
    let body = serde_json::to_vec(&job.to_api()).unwrap_or_default();
    let msg_id = format!("msg_{}", job.job_id);
    let mut deliveries = job.deliveries.clone();
    while (deliveries.len() as u32) < cfg.max_attempts {
        if !deliveries.is_empty() {
            tokio::time::sleep(cfg.delay(deliveries.len() as u32 - 1)).await;
        }
        let ts = now_ms() / 1000;
        let sent = client
            .post(&url)
            .timeout(cfg.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", cfg.signer.sign(&msg_id, ts, &body))
            .body(body.clone())
            .send()
            .await;
        let (delivery, outcome) = match sent {
            Ok(resp) => {
                let code = resp.status().as_u16();
                let outcome = match code {
                    200..=299 => Some(Outcome::Delivered),
                    500..=599 | 408 | 429 => None,
                    _ => Some(Outcome::Rejected),
                };
                (Delivery { at_ms: now_ms(), status: Some(code), error: None }, outcome)
            }
            Err(e) => (Delivery { at_ms: now_ms(), status: None, error: Some(e.to_string()) }, None),
        };
        deliveries.push(delivery);
        let done = outcome.is_some() || deliveries.len() as u32 >= cfg.max_attempts;
        record(deliveries.clone(), !done).await;
        if let Some(o) = outcome {
            return o;
        }
    }
    Outcome::GaveUp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        // From the Standard Webhooks specification's reference implementations.
        let s = Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            s.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn private_addresses_are_recognised() {
        for ip in ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.1.1", "::1", "fd00::1", "100.64.0.1"]
        {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860:4860::8888"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    fn cfg(allow: &[&str]) -> WebhookConfig {
        WebhookConfig {
            signer: Signer::from_secret(&Signer::generate()).unwrap(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            max_attempts: 3,
            backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn loopback_callbacks_need_an_explicit_allow() {
        let e = cfg(&[]).check("http://127.0.0.1:9/hook").await.unwrap_err();
        assert!(e.to_string().contains("--webhook-allow 127.0.0.1"), "{e}");
        cfg(&["127.0.0.1"]).check("http://127.0.0.1:9/hook").await.unwrap();
        let e = cfg(&["hooks.example.com"]).check("http://127.0.0.1:9/hook").await.unwrap_err();
        assert!(e.to_string().contains("allowlist"), "{e}");
        let e = cfg(&[]).check("ftp://example.com/x").await.unwrap_err();
        assert!(e.to_string().contains("scheme"), "{e}");
        cfg(&[]).check("https://8.8.8.8/hook").await.unwrap();
    }
}
