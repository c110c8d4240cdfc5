//! A minimal HTTP/1.1 client over one keep-alive connection (hyper), for the integration tests
//! and the load generator. Loopback only: it connects to the address it is given, nothing else.

use std::io;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An error from [`Conn`].
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A response: its status and its whole body.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One connection to the server, reopened when the server closes it (as it may after a 413).
pub struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// A connection to `addr` (opened on first use).
    pub fn new(addr: SocketAddr) -> Self {
        Conn { addr, sender: None }
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, Error> {
        if let Some(sender) = &mut self.sender {
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Ok(self.sender.as_mut().expect("checked above"));
            }
        }
        self.sender = None;
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the connection closes; errors show up on the next request.
            let _ = connection.await;
        });
        Ok(self.sender.insert(sender))
    }

    /// Sends one request and reads the whole response.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Reply, Error> {
        let host = self.addr.to_string();
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host);
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        let request = builder.body(Full::new(body))?;
        let sender = self.sender().await?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply { status, body })
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<Reply, Error> {
        self.request(Method::GET, path, None, Bytes::new()).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&mut self, path: &str, body: impl Into<Bytes>) -> Result<Reply, Error> {
        self.request(Method::POST, path, Some("application/json"), body.into())
            .await
    }
}

/// Reads a `kB` field (`VmRSS:`, `VmHWM:`) of `/proc/<pid>/status`, in bytes.
pub fn pid_status_bytes(pid: u32, field: &str) -> io::Result<Option<u64>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(crate::parse_status_kb(&status, field))
}
