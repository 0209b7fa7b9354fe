//! The HTTP endpoint: `/metrics`, `/healthz` (the process answers) and `/readyz` (the RDS
//! answers, for a controller).
//!
//! The node plugin serves it on the host's network, so it is built for hostile clients: headers
//! must arrive within seconds, a connection lives a bounded time, at most
//! [`MAX_HTTP_CONNECTIONS`] are served at once, readiness is cached so requests cannot turn
//! into SSH sessions, and no body shows an address, a key or an error text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use tokio::sync::{Mutex, Semaphore};

use super::{encode, PoolSource, POOL_READ_TIMEOUT};

/// Connections served at once; more are closed on arrival (the idle ones are gone within
/// [`HEADER_READ_TIMEOUT`]).
pub const MAX_HTTP_CONNECTIONS: usize = 32;
/// A request's headers must arrive within this; a half-sent request is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection's whole life, keep-alive included: a scrape takes well under this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How long one readiness answer is reused.
const READY_CACHE: Duration = Duration::from_secs(5);

/// The RDS's readiness, read at most once per [`READY_CACHE`] whatever the request rate.
struct Readiness {
    pool: Option<Arc<PoolSource>>,
    last: Mutex<Option<(Instant, bool)>>,
}

impl Readiness {
    async fn ready(&self) -> bool {
        let Some(pool) = &self.pool else {
            return true;
        };
        // Held across the check: concurrent requests wait for one answer instead of each
        // opening an SSH channel.
        let mut last = self.last.lock().await;
        if let Some((at, ready)) = *last {
            if at.elapsed() < READY_CACHE {
                return ready;
            }
        }
        let ready = match pool
            .rds
            .identity(crate::rds::deadline_in(POOL_READ_TIMEOUT))
            .await
        {
            Ok(_) => true,
            Err(e) => {
                // The reason goes to the log, which operators read, not to the HTTP body.
                tracing::warn!(error = %e, "readiness: the RDS does not answer");
                false
            }
        };
        *last = Some((Instant::now(), ready));
        ready
    }
}

fn reply(status: u16, body: &'static str) -> http::Response<Full<Bytes>> {
    reply_owned(status, body.to_string())
}

fn reply_owned(status: u16, body: String) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    response
}

async fn respond(
    path: &str,
    pool: Option<&PoolSource>,
    readiness: &Readiness,
) -> http::Response<Full<Bytes>> {
    match path {
        "/metrics" => {
            if let Some(pool) = pool {
                pool.refresh().await;
            }
            reply_owned(200, encode())
        }
        "/healthz" => reply(200, "ok\n"),
        "/readyz" if readiness.ready().await => reply(200, "ok\n"),
        "/readyz" => reply(503, "not ready\n"),
        _ => reply(404, "not found\n"),
    }
}

/// Serves the endpoint on `addr` until the returned task is aborted.
pub async fn serve_http(
    addr: SocketAddr,
    pool: Option<Arc<PoolSource>>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "serving metrics and health");
    let readiness = Arc::new(Readiness {
        pool: pool.clone(),
        last: Mutex::new(None),
    });
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Usually out of file descriptors: back off rather than spin.
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                // Closed at once rather than queued: a queue would hold descriptors too.
                tracing::debug!("metrics: connection limit reached, closing a new connection");
                drop(stream);
                continue;
            };
            let pool = pool.clone();
            let readiness = Arc::clone(&readiness);
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let pool = pool.clone();
                        let readiness = Arc::clone(&readiness);
                        async move {
                            let response =
                                respond(request.uri().path(), pool.as_deref(), &readiness).await;
                            Ok::<_, Infallible>(response)
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(io, service);
                match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended"),
                    Err(_) => {
                        tracing::debug!("metrics connection closed at the end of its lifetime")
                    }
                }
            });
        }
    });
    Ok((local, task))
}
