//! RFC 9457 problem details (`application/problem+json`), the one error body every Iceway HTTP
//! surface answers with: the credential API, the signaling upgrade and the static pages.
//!
//! The body is `{"type":"about:blank","title":<reason phrase>,"status":N,"detail":...,
//! "reason":<code>}`; `reason` is a low-cardinality, machine-readable code apps can branch on.
//! Every problem is sent with `Cache-Control: no-store`, and optionally `Retry-After` and
//! `WWW-Authenticate`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An RFC 9457 problem; `reason` is a low-cardinality code apps can branch on.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    detail: String,
    reason: &'static str,
    retry_after: Option<u64>,
    www_authenticate: Option<&'static str>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    reason: &'a str,
}

impl Problem {
    pub fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            reason,
            retry_after: None,
            www_authenticate: None,
        }
    }

    /// Adds `Retry-After: secs`.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Adds a `WWW-Authenticate` challenge.
    pub fn with_www_authenticate(mut self, challenge: &'static str) -> Self {
        self.www_authenticate = Some(challenge);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            reason: self.reason,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (self.status, json).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = self.www_authenticate {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn body(resp: Response) -> serde_json::Value {
        let bytes = to_bytes(resp.into_body(), 1 << 16).await.expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn body_and_headers_follow_rfc_9457() {
        let resp =
            Problem::new(StatusCode::NOT_FOUND, "not_found", "no such resource").into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let h = resp.headers();
        assert_eq!(h[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert!(h.get(header::RETRY_AFTER).is_none());
        assert!(h.get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(
            body(resp).await,
            serde_json::json!({
                "type": "about:blank",
                "title": "Not Found",
                "status": 404,
                "detail": "no such resource",
                "reason": "not_found",
            })
        );
    }

    #[tokio::test]
    async fn optional_headers() {
        let p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down")
            .with_retry_after(3)
            .with_www_authenticate(r#"Bearer realm="x""#);
        assert_eq!(p.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(p.reason(), "rate_limited");
        let resp = p.into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="x""#
        );
        assert_eq!(body(resp).await["title"], "Too Many Requests");
    }
}
