//! A blocking client for the daemon's API: what the `kanon` subcommands and
//! the tests use. Plain HTTP; for a daemon beyond loopback, put TLS in front.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with an error.
    #[error("{message} (HTTP {status}, {code})")]
    Api { status: u16, code: String, message: String },
    /// No answer: the daemon is not there, or the connection broke.
    #[error("cannot reach the daemon at {base}: {detail}")]
    Transport { base: String, detail: String },
    /// An answer that is not what the API promises.
    #[error("unexpected answer from the daemon: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status, if the daemon answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Largest response body read.
const MAX_RESPONSE_BYTES: u64 = 1 << 30;

/// A connection to one daemon with one token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A response: status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    /// `base` is like `http://127.0.0.1:7878`.
    pub fn new(base: &str, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A connection per call: the daemon refuses some requests before
            // reading their bodies and then closes the connection, which a
            // pooled connection would only find out on its next call.
            .max_idle_connections(0)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Self { base: base.trim_end_matches('/').to_owned(), token, agent }
    }

    /// The same daemon, another token.
    pub fn with_token(&self, token: Option<String>) -> Self {
        Self { token, ..self.clone() }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token it sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn transport(&self, e: ureq::Error) -> ClientError {
        ClientError::Transport { base: self.base.clone(), detail: e.to_string() }
    }

    fn finish(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, ClientError> {
        let mut response = response.map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport(e))?;
        Ok(Reply { status, body })
    }

    /// Send a request as given and return whatever came back.
    pub fn raw(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Result<Reply, ClientError> {
        let mut request = ureq::http::Request::builder().method(method).uri(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some((content_type, _)) = body {
            request = request.header("content-type", content_type);
        }
        let request = request
            .body(body.map(|(_, b)| b.to_vec()).unwrap_or_default())
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        self.finish(self.agent.run(request))
    }

    /// A call whose success is a JSON body; an error status becomes
    /// [`ClientError::Api`].
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<T, ClientError> {
        let reply = self.raw(method, path, body)?;
        check(reply)?.json()
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, None)
    }

    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        Ok(check(self.raw("GET", path, None)?)?.text())
    }

    /// A body as bytes (a Parquet file).
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        Ok(check(self.raw("GET", path, None)?)?.body)
    }

    pub fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(method, path, Some(("application/json", &json)))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("DELETE", path, None)
    }

    /// Redeem a one-time enrolment code for a tenant admin's token held by
    /// `name` (no token needed): the token, and this daemon with it.
    pub fn enrol(
        &self,
        code: &str,
        name: &str,
        ttl_secs: Option<u64>,
    ) -> Result<(Client, String), ClientError> {
        let body = serde_json::json!({"code": code, "name": name, "ttl_secs": ttl_secs});
        let issued: serde_json::Value = self.with_token(None).send("POST", "/v1/enrol", &body)?;
        let token = issued["token"]
            .as_str()
            .ok_or_else(|| ClientError::Decode("the enrolment's answer holds no token".into()))?
            .to_owned();
        Ok((self.with_token(Some(token.clone())), token))
    }

    /// Upload a file's bytes, streamed from `reader`.
    pub fn upload<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        reader: impl std::io::Read + Send + Sync + 'static,
    ) -> Result<T, ClientError> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("content-type", content_type);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(ureq::SendBody::from_owned_reader(reader))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let reply = self.finish(self.agent.run(request))?;
        check(reply)?.json()
    }
}

/// An error status becomes [`ClientError::Api`] with the daemon's message.
fn check(reply: Reply) -> Result<Reply, ClientError> {
    if reply.status < 400 {
        return Ok(reply);
    }
    #[derive(serde::Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Body>(&reply.body) {
        Ok(body) => {
            Err(ClientError::Api { status: reply.status, code: body.error.code, message: body.error.message })
        }
        Err(_) => Err(ClientError::Api { status: reply.status, code: "http".into(), message: reply.text() }),
    }
}
