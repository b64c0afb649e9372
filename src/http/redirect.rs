//! The optional plain-HTTP listener (`server.redirect_http`) of a gateway
//! that serves HTTPS: every request is answered `308` to the same path and
//! query on the HTTPS port, so a technician or a screen typing
//! `http://box/display` lands on the secure page. It serves nothing else —
//! no API, no WebSocket — so nothing travels in clear text by accident.

use std::pin::pin;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST, LOCATION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::response::{BadRequest, HttpError, HttpResponse};
use crate::config::LimitsConfig;
use crate::net::peer_limit::{CountedStream, PeerCounts};

/// Serves redirects on `listener` until `shutdown`; its connections are
/// tracked in `connections`, so the gateway's shutdown drains them too.
pub async fn run(
    listener: TcpListener,
    https_port: u16,
    limits: LimitsConfig,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false);
    let peers = PeerCounts::new(limits.connections_per_ip);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Some(place) = peers.admit(peer.ip()) else {
            continue;
        };
        let stream = CountedStream::new(stream, place);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| async move {
            Ok::<_, std::convert::Infallible>(redirect(&request, https_port))
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut connection = pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "redirect connection ended with an error");
            }
        });
    }
}

/// `308 Location: https://<host>:<https_port><path?query>`.
pub fn redirect(request: &Request<Incoming>, https_port: u16) -> HttpResponse {
    let host = request
        .headers()
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .and_then(host_without_port);
    let Some(host) = host else {
        return HttpError::bad_request(
            BadRequest::MissingHost,
            "a Host header is needed to redirect",
        )
        .into_response();
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return HttpError::bad_request(BadRequest::InvalidHost, "the Host header is not usable")
            .into_response();
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(LOCATION, location);
    response
}

/// The host of a Host header (`box:80`, `[::1]:80`, `box`), if it is a
/// plausible host name or address; anything else is refused rather than
/// echoed into a Location header.
fn host_without_port(header: &str) -> Option<&str> {
    let host = if let Some(rest) = header.strip_prefix('[') {
        let end = rest.find(']')?;
        &header[..end + 2]
    } else {
        header.split(':').next()?
    };
    let plausible = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    plausible.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::host_without_port;

    #[test]
    fn hosts_are_taken_from_the_header() {
        assert_eq!(
            host_without_port("box.clinic.lan:80"),
            Some("box.clinic.lan")
        );
        assert_eq!(host_without_port("box"), Some("box"));
        assert_eq!(host_without_port("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_without_port("evil.com/x"), None);
        assert_eq!(host_without_port(""), None);
        assert_eq!(host_without_port("[::1"), None);
    }
}
