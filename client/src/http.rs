//! The API over HTTP: requests with the token, answers turned into JSON or
//! into a [`Failure`] that says what happened.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header::HeaderMap};
use serde_json::{Value, json};

use crate::error::Failure;

/// A JSON answer with its status and headers.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<Self, Failure> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Usage(format!(
                "the API URL `{base}` must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // Presigned links point at object storage; the client follows
            // nothing on its own and streams results through the API.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bibliomq-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::Local(format!("cannot set up HTTP: {e}")))?;
        Ok(Self {
            base,
            http,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends; a transport error becomes [`Failure::Unreachable`] (or a
    /// timeout), an error status becomes [`Failure::Api`] from the body.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response, Failure> {
        let response = req.send().await.map_err(|e| self.transport(&e))?;
        if response.status().is_success() || response.status().is_redirection() {
            return Ok(response);
        }
        Err(api_failure(response).await)
    }

    /// Sends and reads the JSON answer.
    pub async fn json(&self, req: RequestBuilder) -> Result<Answer, Failure> {
        let response = self.send(req).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
        let body = serde_json::from_slice(&bytes).map_err(|_| Failure::Api {
            status: 502,
            code: "unreadable_answer".into(),
            message: format!(
                "the API answered {status} with something that is not JSON: {}",
                snippet(&bytes)
            ),
            field: None,
            error: json!({}),
        })?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        Ok(self.json(self.request(Method::GET, path)).await?.body)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Answer, Failure> {
        self.json(self.request(Method::POST, path).json(body)).await
    }

    pub fn transport(&self, e: &reqwest::Error) -> Failure {
        if e.is_decode() || e.is_body() {
            // Something answered, but not the way the API does (a wrong URL,
            // a proxy's error page, a connection cut mid-answer).
            return Failure::Api {
                status: 502,
                code: "unreadable_answer".into(),
                message: format!("the answer from {} could not be read: {e}", self.base),
                field: None,
                error: json!({}),
            };
        }
        if e.is_timeout() {
            return Failure::Api {
                status: 504,
                code: "client_timeout".into(),
                message: format!("no answer from {} in time", self.base),
                field: None,
                error: json!({}),
            };
        }
        // The innermost cause says the most ("Connection refused").
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail = s.to_string();
            source = s.source();
        }
        Failure::Unreachable {
            url: self.base.clone(),
            detail,
        }
    }
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

/// An error answer, read from the API's `{"error": {...}}` body when it has one.
async fn api_failure(response: Response) -> Failure {
    let status = response.status();
    let bytes = response.bytes().await.unwrap_or_default();
    failure_from_body(status, &bytes)
}

/// The failure an error body (`{"error": {...}}`, the API's shape) stands
/// for, sent with `status`; a stand-in naming the status when it is not
/// that shape.
pub fn failure_from_body(status: StatusCode, bytes: &[u8]) -> Failure {
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let error = &body["error"];
    match (error["code"].as_str(), error["message"].as_str()) {
        (Some(code), Some(message)) => Failure::Api {
            status: status.as_u16(),
            code: code.to_owned(),
            message: message.to_owned(),
            field: error["field"].as_str().map(str::to_owned),
            error: error.clone(),
        },
        _ => Failure::Api {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            message: format!("the API answered {status}: {}", snippet(bytes)),
            field: None,
            error: json!({}),
        },
    }
}

/// Percent-encodes one path segment (ids, ISBNs and patron ids are plain,
/// but whatever a person types must not change the path): everything but
/// RFC 3986's unreserved characters, `/` included.
pub fn segment(raw: &str) -> String {
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(raw, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("978-84"), "978-84");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn an_api_url_needs_a_scheme() {
        assert!(Api::new("localhost:8080", None, Duration::from_secs(1)).is_err());
        let api = Api::new("http://h:1/", None, Duration::from_secs(1)).unwrap();
        assert_eq!(api.base(), "http://h:1");
    }
}
