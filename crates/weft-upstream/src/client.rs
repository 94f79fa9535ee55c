//! The upstream client: gives a request the shape its cluster's protocol needs and sends one try
//! to one host over the cluster's pools, classifying every failure as a [`weft_core::Error`].

use crate::body::{DownBody, RespBody, UpBody, Upload, UploadState};
use crate::cluster::{ClusterRt, Host, PooledH1};
use crate::h2_client::{self, H2Conn, H2Failure};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use weft_config::{RoutePriority, UpstreamProtocol};
use weft_core::{Error, Reason, Retry};

/// The upstream request before its body: cloned per try when retries are possible.
pub struct Prepared {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

impl Prepared {
    pub fn into_request(self, body: UpBody) -> Request<UpBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method;
        *r.uri_mut() = self.uri;
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers;
        r
    }
}

/// Gives a request the shape its cluster's protocol needs. HTTP/1.1: origin-form URI, HTTP/1.1,
/// and `Host` set to the authority. HTTP/2: absolute URI with the authority, no `Host` header.
/// The authority is `authority_override`, else the URI's, else (HTTP/2) the `Host` header.
pub fn shape_request(
    protocol: UpstreamProtocol,
    method: Method,
    uri: Uri,
    rewritten_path: Option<String>,
    authority_override: Option<&str>,
    headers: HeaderMap,
) -> Prepared {
    let mut prepared = Prepared {
        method,
        uri: Uri::default(),
        version: Version::HTTP_11,
        headers,
    };
    match protocol {
        UpstreamProtocol::Http1 => {
            // Origin-form URI and a Host header, whatever the downstream protocol was.
            let authority = authority_override
                .or_else(|| uri.authority().map(|a| a.as_str()))
                .map(str::to_string);
            prepared.uri = match rewritten_path {
                Some(p) => p.parse().unwrap_or_default(),
                None if uri.authority().is_none() => uri,
                None => uri
                    .path_and_query()
                    .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone())),
            };
            if let Some(a) = authority {
                if let Ok(v) = HeaderValue::from_str(&a) {
                    prepared.headers.insert(header::HOST, v);
                }
            }
        }
        // An absolute `http` URI with an authority that nothing rewrites (what an HTTP/2 client
        // sends) goes as it came: no copy, no parse.
        UpstreamProtocol::Http2
            if authority_override.is_none()
                && rewritten_path.is_none()
                && uri.scheme() == Some(&http::uri::Scheme::HTTP)
                && uri.authority().is_some_and(|a| !a.as_str().is_empty()) =>
        {
            prepared.uri = uri;
        }
        UpstreamProtocol::Http2 => {
            let authority = authority_override
                .map(str::to_string)
                .or_else(|| uri.authority().map(|a| a.as_str().to_string()))
                .or_else(|| {
                    prepared
                        .headers
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string)
                })
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "localhost".to_string());
            let pq = rewritten_path.unwrap_or_else(|| uri.path_and_query().map_or("/", |p| p.as_str()).to_string());
            prepared.uri = Uri::builder()
                .scheme("http")
                .authority(authority.as_str())
                .path_and_query(pq.as_str())
                .build()
                .unwrap_or_default();
        }
    }
    if protocol == UpstreamProtocol::Http2 {
        prepared.version = Version::HTTP_2;
        prepared.headers.remove(header::HOST);
    }
    prepared
}

/// A try's response and, for HTTP/1.1 through hyper, the pooled connection to release once its
/// body ends (weft's own client's body returns its connection itself).
pub type TryOk = (Response<RespBody>, Option<PooledH1>);

/// A failed try: the error, and the body when it was never handed to a connection (so a retry can
/// still send it).
pub struct TryFailure {
    pub error: Error,
    pub unsent: Option<UpBody>,
}

fn failed(error: Error, unsent: Option<UpBody>) -> TryFailure {
    TryFailure { error, unsent }
}

/// A connection failed after (part of) the request was written.
fn classify(e: hyper::Error) -> Error {
    let reason = if e.is_parse() || e.is_parse_status() {
        Reason::UpstreamProtocolError
    } else {
        Reason::UpstreamReset
    };
    Error::upstream(reason, Retry::Safe).cause(e)
}

fn timeout() -> Error {
    Error::upstream(Reason::UpstreamTimeout, Retry::Safe)
}

/// The timer that bounds a try ([`send_once`]), kept from request to request by whoever sends
/// many (a downstream connection): arming a new tokio timer and clearing it again cost ~700
/// instructions of an HTTP/1.1 keep-alive request (`bench/instructions`, `--timeout 0s`), while
/// pushing a kept timer's deadline later is one atomic store (tokio moves the entry in its wheel
/// only when the old deadline comes, or when the new deadline is sooner). `default()` holds no
/// timer until one is needed.
#[derive(Default)]
pub struct TryTimer(Option<Pin<Box<tokio::time::Sleep>>>);

impl TryTimer {
    /// The timer, set to go off at `deadline`.
    fn arm(&mut self, deadline: Instant) -> Pin<&mut tokio::time::Sleep> {
        if let Some(s) = &mut self.0 {
            s.as_mut().reset(deadline.into());
        }
        self.0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())))
            .as_mut()
    }

    /// Whether it holds a timer (one that can be kept for the next request).
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

/// One try on one host, bounded by `deadline` (with `timer`). While the client's upload
/// (`upload`) is still in progress the deadline restarts from when it could have finished: like
/// Envoy, a route timeout counts from the end of the request, so a slow client is not blamed on
/// the upstream.
pub async fn send_once(
    cluster: &Arc<ClusterRt>,
    host: &Arc<Host>,
    request: Request<UpBody>,
    deadline: Option<Instant>,
    timer: &mut TryTimer,
    priority: RoutePriority,
    upload: Option<(&Upload, Duration)>,
) -> Result<TryOk, TryFailure> {
    let fut = async {
        let mut request = request;
        // A pooled connection may have been closed by the server just now; a request that was never
        // written is safe to put on another connection.
        for _ in 0..3 {
            let sent = match cluster.protocol() {
                UpstreamProtocol::Http1 if in_task(&request) => {
                    match raw_try(cluster, host, &mut request, deadline, priority).await {
                        Ok(resp) => {
                            // Written and answered: its header map serves a later message.
                            crate::h1::maps::give(std::mem::take(request.headers_mut()));
                            return Ok((resp, None));
                        }
                        Err(RawFailure::Again) => continue,
                        Err(RawFailure::Failed(e, unsent)) => {
                            let body = unsent.then(|| std::mem::replace(request.body_mut(), UpBody::Empty));
                            return Err(failed(e, body));
                        }
                    }
                }
                UpstreamProtocol::Http1 => {
                    let mut pooled = match cluster.checkout_h1(host, deadline, priority).await {
                        Ok(p) => p,
                        Err(e) => return Err(failed(e, Some(request.into_body()))),
                    };
                    let sent = pooled.sender.try_send_request(request).await;
                    sent.map(|r| (r.map(RespBody::Hyper), Some(pooled)))
                }
                UpstreamProtocol::Http2 => {
                    let conn = match cluster.checkout_h2(host, priority).await {
                        Ok(c) => c,
                        Err(e) => return Err(failed(e, Some(request.into_body()))),
                    };
                    match h2_try(&conn, &mut request).await {
                        Ok(resp) => return Ok((resp, None)),
                        Err(None) => continue,
                        Err(Some(f)) => return Err(f),
                    }
                }
            };
            match sent {
                Ok(ok) => return Ok(ok),
                Err(mut e) => match e.take_message() {
                    Some(r) => request = r,
                    None => return Err(failed(classify(e.into_error()), None)),
                },
            }
        }
        // hyper hands back only requests it never wrote; weft's own client also resends an
        // idempotent request the upstream may have seen before closing.
        let retry = match cluster.protocol() {
            UpstreamProtocol::Http1 if in_task(&request) => Retry::Safe,
            _ => Retry::NotSent,
        };
        let e =
            Error::upstream(Reason::UpstreamReset, retry).context("connection closed before the request was answered");
        Err(failed(e, Some(request.into_body())))
    };
    let Some(mut d) = deadline else {
        return fut.await;
    };
    tokio::pin!(fut);
    loop {
        let mut sleep = timer.arm(d);
        let ended = std::future::poll_fn(|cx| {
            let had_budget = tokio::task::coop::has_budget_remaining();
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(r));
            }
            // As tokio's `Timeout`: when the try used up the task's budget, the timer is still
            // looked at (a timer out of budget says pending without looking).
            if had_budget && !tokio::task::coop::has_budget_remaining() {
                let mut unconstrained = tokio::task::unconstrained(sleep.as_mut());
                return Pin::new(&mut unconstrained).poll(cx).map(Err);
            }
            sleep.as_mut().poll(cx).map(Err)
        })
        .await;
        match ended {
            Ok(r) => return r,
            Err(()) => match &upload {
                // The client is still sending: the timer restarts when it could have finished.
                Some((up, t)) if up.state() == UploadState::InProgress => d = Instant::now() + *t,
                _ => return Err(failed(timeout(), None)),
            },
        }
    }
}

/// Whether weft's own HTTP/1.1 client ([`crate::h1`]) takes the request: anything but a protocol
/// switch (an upgrade or CONNECT), which hyper's client handles.
fn in_task(request: &Request<UpBody>) -> bool {
    request.method() != Method::CONNECT && !request.headers().contains_key(header::UPGRADE)
}

/// One round trip on an HTTP/2 connection. `Err(None)`: the connection could take no new stream
/// and the request is intact, for another connection.
async fn h2_try(conn: &H2Conn, request: &mut Request<UpBody>) -> Result<Response<RespBody>, Option<TryFailure>> {
    match h2_client::round_trip(conn, request).await {
        Ok(resp) => Ok(resp.map(RespBody::H2)),
        Err(H2Failure::Again) => Err(None),
        Err(H2Failure::NotOpened(e)) => {
            let body = std::mem::replace(request.body_mut(), UpBody::Empty);
            Err(Some(failed(
                Error::upstream(Reason::UpstreamReset, Retry::NotSent).cause(e),
                Some(body),
            )))
        }
        // As with hyper's client before: the upstream may have seen the request.
        Err(H2Failure::Failed(e)) => Err(Some(failed(
            Error::upstream(Reason::UpstreamReset, Retry::Safe).cause(e),
            None,
        ))),
        Err(H2Failure::Body(e)) => Err(Some(failed(
            Error::upstream(Reason::UpstreamReset, Retry::Unsafe)
                .context("the request body failed")
                .cause(e),
            None,
        ))),
    }
}

enum RawFailure {
    /// A reused connection turned out closed before the request could be answered, and nothing of
    /// the body was taken: the request goes on another connection.
    Again,
    /// The try failed; true: its body was never taken and is still in the request.
    Failed(Error, bool),
}

/// One round trip with weft's own client.
async fn raw_try(
    cluster: &Arc<ClusterRt>,
    host: &Arc<Host>,
    request: &mut Request<UpBody>,
    deadline: Option<Instant>,
    priority: RoutePriority,
) -> Result<Response<RespBody>, RawFailure> {
    use crate::h1::{round_trip, RawBody, RoundTripError};
    let (mut conn, reused, home) = match cluster.checkout_raw(host, deadline, priority).await {
        Ok(c) => c,
        Err(e) => return Err(RawFailure::Failed(e, true)),
    };
    // The body leaves the request for the round trip, and comes back if it was never started.
    let mut body = std::mem::replace(request.body_mut(), UpBody::Empty);
    let was_stream = matches!(body, UpBody::Stream(..));
    let (method, uri, headers) = (request.method(), request.uri(), request.headers());
    let r = round_trip(&mut conn, method, uri, headers, &mut body, reused).await;
    let untouched = !matches!(body, UpBody::Empty);
    *request.body_mut() = body;
    match r {
        Ok(answer) => {
            let head = answer.head;
            let body = RawBody::new(conn, &head, answer.pump, home);
            let mut resp = Response::new(RespBody::Raw(body));
            *resp.status_mut() = head.status;
            *resp.version_mut() = head.version;
            *resp.headers_mut() = head.headers;
            Ok(resp)
        }
        // `round_trip` hands a streamed body back whole when it reports a stale connection; one
        // that did not come back cannot be sent again.
        Err(RoundTripError::Stale(e)) if was_stream && !untouched => Err(RawFailure::Failed(
            Error::upstream(Reason::UpstreamReset, Retry::Safe).cause(e),
            false,
        )),
        Err(RoundTripError::Stale(_)) => Err(RawFailure::Again),
        Err(RoundTripError::Io(e)) => Err(RawFailure::Failed(
            Error::upstream(Reason::UpstreamReset, Retry::Safe).cause(e),
            untouched,
        )),
        Err(RoundTripError::Parse(e)) => Err(RawFailure::Failed(
            Error::upstream(Reason::UpstreamProtocolError, Retry::Safe).cause(e),
            untouched,
        )),
        Err(RoundTripError::Body) => Err(RawFailure::Failed(
            Error::upstream(Reason::UpstreamReset, Retry::Unsafe).context("the request body failed"),
            false,
        )),
    }
}

/// Sends one request to a cluster outside any downstream exchange (mirroring): picks a host,
/// counts the request against the cluster's circuit breaker, sends it, and reads the response body
/// to its end so the connection can return to the pool. Everything is bounded by `deadline`.
pub async fn send_detached(cluster: Arc<ClusterRt>, request: Request<UpBody>, deadline: Instant) -> Result<u16, Error> {
    let host = cluster
        .pick(None, None, None)
        .ok_or_else(|| Error::internal(Reason::NoHealthyUpstream))?;
    // Shadow traffic counts as default priority.
    let priority = RoutePriority::Default;
    let active = cluster
        .start_request(&host, priority)
        .ok_or_else(|| Error::internal(Reason::Overflow))?;
    let start = Instant::now();
    let mut timer = TryTimer::default();
    let (resp, pooled) = match send_once(&cluster, &host, request, Some(deadline), &mut timer, priority, None).await {
        Ok(r) => r,
        Err(f) => {
            host.rq_error.fetch_add(1, Ordering::Relaxed);
            if f.error.reason == Reason::UpstreamTimeout {
                cluster.stats.rq_timeout.inc();
            }
            return Err(f.error);
        }
    };
    let status = resp.status().as_u16();
    cluster.stats.record(status, start.elapsed());
    if status >= 500 {
        host.rq_error.fetch_add(1, Ordering::Relaxed);
    }
    let mut body = DownBody::upstream(resp.into_body(), pooled);
    // Read to the end: the body returns its connection to the pool when it ends.
    let _ = tokio::time::timeout_at(deadline.into(), async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await;
    drop(active);
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaped(uri: &str, path: Option<&str>, authority: Option<&str>, host: Option<&str>) -> Prepared {
        let mut headers = HeaderMap::new();
        if let Some(h) = host {
            headers.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        }
        let uri: Uri = uri.parse().unwrap();
        shape_request(
            UpstreamProtocol::Http2,
            Method::GET,
            uri,
            path.map(String::from),
            authority,
            headers,
        )
    }

    #[test]
    fn http2_requests_carry_an_absolute_http_uri_and_no_host() {
        // As an HTTP/2 client sent it: kept.
        let p = shaped("http://svc:8080/a?b=1", None, None, None);
        assert_eq!(p.uri, "http://svc:8080/a?b=1");
        assert_eq!(p.version, Version::HTTP_2);
        // From HTTP/1.1: origin form and a Host header.
        let p = shaped("/a?b=1", None, None, Some("svc:8080"));
        assert_eq!(p.uri, "http://svc:8080/a?b=1");
        assert!(!p.headers.contains_key(header::HOST));
        // Rewritten path, authority override, another scheme, no authority at all.
        assert_eq!(shaped("http://svc/a", Some("/z"), None, None).uri, "http://svc/z");
        assert_eq!(
            shaped("http://svc/a", None, Some("other:1"), None).uri,
            "http://other:1/a"
        );
        assert_eq!(shaped("https://svc/a", None, None, None).uri, "http://svc/a");
        assert_eq!(shaped("/a", None, None, None).uri, "http://localhost/a");
    }
}
