//! The API client: HTTP/1.1 over the daemon's Unix socket (hyper), JSON bodies, error
//! bodies turned into messages, operations waited for, and upgraded streams.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub struct Api {
    pub socket: PathBuf,
}

/// An error answer of the daemon (its message is shown as is).
#[derive(Debug)]
pub struct ApiFailure {
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiFailure {}

impl Api {
    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    " (is bulkheadd running? start it with `bulkheadd &`, or point --socket/BULKHEAD_SOCKET at it)"
                }
                std::io::ErrorKind::PermissionDenied => {
                    " (you need to be root or in the bulkhead group)"
                }
                _ => "",
            };
            anyhow!("cannot reach bulkheadd at {}: {e}{hint}", self.socket.display())
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with bulkheadd")?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender
            .send_request(req)
            .await
            .context("request to bulkheadd")
    }

    fn request(method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Request<Full<Bytes>>> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://bulkhead{path}"))
            .header("host", "bulkhead");
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        Ok(b.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
    }

    /// A request whose answer is JSON; error answers become [`ApiFailure`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        headers: &[(&str, String)],
    ) -> Result<(T, Option<String>)> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let mut req = Self::request(method, path, body)?;
        for (k, v) in headers {
            req.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes())?,
                v.parse()?,
            );
        }
        let resp = self.send(req).await?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<api::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).to_string());
            return Err(ApiFailure { message: msg }.into());
        }
        let v = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "unexpected answer from bulkheadd: {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        Ok((v, etag))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.call(Method::GET, path, None::<&()>, &[]).await?.0)
    }

    /// A request that returns an operation; waits for it and fails with its error.
    pub async fn operation(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<api::Operation> {
        let (op, _): (api::Operation, _) = self.call(method, path, body, &[]).await?;
        self.wait(&op.id, &op.description).await
    }

    pub async fn wait(&self, id: &str, description: &str) -> Result<api::Operation> {
        let spinner = crate::output::Spinner::start(description);
        let op: api::Operation = loop {
            let op: api::Operation = self
                .get(&format!("/1.0/operations/{id}/wait?timeout=30"))
                .await?;
            if op.status != api::OperationStatus::Running {
                break op;
            }
        };
        drop(spinner);
        match op.status {
            api::OperationStatus::Success => Ok(op),
            _ => bail!(
                "{}",
                op.err
                    .clone()
                    .unwrap_or_else(|| format!("operation {}", op.status))
            ),
        }
    }

    /// A streamed answer (events, logs): the response to read chunks from.
    pub async fn stream(&self, path: &str) -> Result<Response<Incoming>> {
        let resp = self.send(Self::request(Method::GET, path, None)?).await?;
        if !resp.status().is_success() {
            let bytes = resp.into_body().collect().await?.to_bytes();
            let msg = serde_json::from_slice::<api::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).to_string());
            return Err(ApiFailure { message: msg }.into());
        }
        Ok(resp)
    }

    /// An upgraded stream (exec, console).
    pub async fn upgrade(
        &self,
        method: Method,
        path: &str,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://bulkhead{path}"))
            .header("host", "bulkhead")
            .header("connection", "upgrade")
            .header("upgrade", "bulkhead-stream")
            .body(Full::new(Bytes::new()))?;
        let resp = self.send(req).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let bytes = resp.into_body().collect().await?.to_bytes();
            let msg = serde_json::from_slice::<api::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).to_string());
            return Err(ApiFailure { message: msg }.into());
        }
        let up = hyper::upgrade::on(resp)
            .await
            .context("upgrade the connection")?;
        Ok(TokioIo::new(up))
    }
}
