//! The executors: webhook (templated body, env-sourced headers, timeout, retries with
//! exponential backoff and jitter), command (argv with event fields in the environment,
//! timeout), log.

use super::config::{ExecutorConfig, ExecutorKind};
use rand::Rng;
use serde_json::Value;
use std::time::{Duration, Instant};

fn field(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Substitutes `{{service}}`, `{{version}}`, `{{action}}`, `{{id}}`, `{{reason}}` and
/// `{{params.NAME}}`; values are JSON-escaped (the template is usually JSON).
pub fn render(template: &str, event: &Value) -> String {
    let d = &event["data"];
    let esc = |s: String| {
        let q = serde_json::to_string(&s).unwrap_or_default();
        q[1..q.len() - 1].to_string()
    };
    let mut out = template
        .replace("{{service}}", &esc(field(&d["target"]["service"])))
        .replace("{{version}}", &esc(field(&d["target"]["version"])))
        .replace("{{action}}", &esc(field(&d["action"])))
        .replace("{{id}}", &esc(field(&event["id"])))
        .replace("{{reason}}", &esc(field(&d["reason"])));
    if let Some(params) = d["params"].as_object() {
        for (k, v) in params {
            out = out.replace(&format!("{{{{params.{k}}}}}"), &esc(field(v)));
        }
    }
    out
}

/// Runs `exec` for `event`; `Ok(attempts)` or `Err((why, attempts))`.
pub fn execute(exec: &ExecutorConfig, event: &Value) -> Result<u32, (String, u32)> {
    let timeout = exec.attempt_timeout();
    match &exec.kind {
        ExecutorKind::Log => {
            tracing::info!(executor = %exec.name, event = %event, "control event");
            Ok(1)
        }
        ExecutorKind::Webhook {
            url,
            method,
            body,
            headers,
            retries,
        } => {
            let client = reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| (e.to_string(), 0))?;
            let method =
                reqwest::Method::from_bytes(method.as_deref().unwrap_or("POST").as_bytes())
                    .map_err(|e| (e.to_string(), 0))?;
            let payload = body
                .as_deref()
                .map_or_else(|| event.to_string(), |t| render(t, event));
            let mut last = String::new();
            let tries = retries.unwrap_or(super::config::DEFAULT_WEBHOOK_RETRIES) + 1;
            for attempt in 1..=tries {
                let mut req = client
                    .request(method.clone(), url)
                    .header("content-type", "application/json")
                    .body(payload.clone());
                for (k, v) in headers {
                    let value = match v.expose().strip_prefix("env:") {
                        Some(var) => std::env::var(var).map_err(|_| {
                            (
                                format!("header {k}: environment variable {var} is not set"),
                                attempt - 1,
                            )
                        })?,
                        None => v.expose().to_string(),
                    };
                    req = req.header(k, value);
                }
                match req.send() {
                    Ok(r) if r.status().is_success() => return Ok(attempt),
                    Ok(r) => last = format!("{url} answered {}", r.status()),
                    Err(e) => last = format!("{url}: {e}"),
                }
                if attempt < tries {
                    // 200 ms, 400 ms, 800 ms … with up to 50 % jitter.
                    let base = 200u64 << (attempt - 1).min(6);
                    let jitter = rand::rng().random_range(0..=base / 2);
                    std::thread::sleep(Duration::from_millis(base + jitter));
                }
            }
            Err((last, tries))
        }
        ExecutorKind::Command { argv } => {
            let Some((program, args)) = argv.split_first() else {
                return Err(("empty argv".into(), 0));
            };
            let d = &event["data"];
            let mut child = std::process::Command::new(program)
                .args(args)
                .env("TRIKE_EVENT_ID", field(&event["id"]))
                .env("TRIKE_ACTION", field(&d["action"]))
                .env("TRIKE_SERVICE", field(&d["target"]["service"]))
                .env("TRIKE_VERSION", field(&d["target"]["version"]))
                .env("TRIKE_REASON", field(&d["reason"]))
                .env("TRIKE_PARAMS", d["params"].to_string())
                .env("TRIKE_EVENT", event.to_string())
                .stdin(std::process::Stdio::null())
                .spawn()
                .map_err(|e| (format!("{program}: {e}"), 1))?;
            let start = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => return Ok(1),
                    Ok(Some(status)) => return Err((format!("{program} exited with {status}"), 1)),
                    Ok(None) if start.elapsed() > timeout => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err((format!("{program} timed out after {timeout:?}"), 1));
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => return Err((e.to_string(), 1)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Scenario: a webhook executor pointed at an `https://` URL, served by a plain socket that
    /// records the first byte it receives. Guarantees: the executor speaks TLS (a handshake
    /// record, 0x16, arrives) instead of refusing the scheme — production webhooks are HTTPS.
    #[test]
    fn webhooks_speak_tls_to_https_urls() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Never blocks for ever: gives up (None) after 10 s without a connection or a byte.
        listener.set_nonblocking(true).unwrap();
        let server = std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok((mut conn, _)) = listener.accept() {
                    conn.set_nonblocking(false).ok()?;
                    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                    let mut first = [0u8; 1];
                    conn.read_exact(&mut first).ok()?;
                    return Some(first[0]);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        });
        let exec: ExecutorConfig = serde_yaml_ng::from_str(&format!(
            "{{ name: tls, type: webhook, actions: [rollback], url: \"https://127.0.0.1:{port}/hook\", retries: 0, timeout: 2s }}"
        ))
        .unwrap();
        let result = execute(&exec, &serde_json::json!({"id": "x", "data": {}}));
        assert!(result.is_err(), "no TLS server there: {result:?}");
        assert_eq!(server.join().unwrap(), Some(0x16), "a TLS handshake record");
    }
}
