//! `jobctl dev`'s HTTP server: the API's router behind hyper's connection builder, as `axum::serve`
//! would run it, plus what `axum::serve` cannot set: a header read timeout. Without it a connection
//! that sends half a request line, or its headers a byte a second, stays open for as long as the client
//! likes (thousands of them hold as many sockets and tasks). And requests hyper cannot parse are
//! answered in the API's error shape ([`JsonParseErrors`]).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long a client may take to send a request's line and headers (each request of a kept-alive
/// connection included) before the connection is closed. The body is bounded separately: by the API's
/// request timeout.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown`; then stops accepting and resolves once the open
/// connections have finished their requests under way (the caller bounds how long it waits).
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a little instead of spinning.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(JsonParseErrors::new(stream)), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A connection whose unparsable requests are answered in the API's error shape. hyper answers a
/// request it cannot parse (a malformed request line or header: `400`; a URI too long: `414`; too many
/// or too large headers: `431`) itself, with an empty body, before any service sees it, and has no hook
/// to change that answer. So it is changed on its way out: a response head with one of those statuses
/// and `content-length: 0` can only be hyper's own (every 4xx the router makes has a JSON body), and
/// gets the `{"error":{"code","message"}}` body every other error has.
struct JsonParseErrors<T> {
    inner: T,
    /// A rewritten answer, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> JsonParseErrors<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

/// hyper's automatic answer in `head`, rewritten with a JSON body; `None` for anything else.
fn with_json_body(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let (code, message) = match text.get(..13)? {
        "HTTP/1.1 400 " => (
            "malformed_request",
            "the request line or a header is malformed",
        ),
        "HTTP/1.1 414 " => ("uri_too_long", "the request's URI is too long"),
        "HTTP/1.1 431 " => (
            "headers_too_large",
            "the request has too many headers, or too large ones",
        ),
        _ => return None,
    };
    let empty = "\r\ncontent-length: 0\r\n";
    let at = text.to_ascii_lowercase().find(empty)?;
    if !text.ends_with("\r\n\r\n") {
        return None;
    }
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let headers = format!(
        // hyper closes the connection after it, and says so (`connection: close`) itself.
        "\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    Some(
        [&text[..at], &headers, &text[at + empty.len()..], &body]
            .concat()
            .into_bytes(),
    )
}

impl<T: tokio::io::AsyncWrite + Unpin> JsonParseErrors<T> {
    /// Writes what is pending of a rewritten answer.
    fn poll_pending(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            match std::pin::Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for JsonParseErrors<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for JsonParseErrors<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(rewritten) = with_json_body(buf) {
            self.pending = Some((rewritten, 0));
            // Taken whole: the rest is written by this call or by the flush that follows.
            let _ = self.poll_pending(cx)?;
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then hands over its whole response head in one buffer, where it is
    // recognised.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::with_json_body;

    #[test]
    fn hypers_own_answers_get_a_json_body_and_others_pass() {
        let head =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(with_json_body(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("date: x"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "headers_too_large");
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"{\"kind\":1}",
        ] {
            assert_eq!(with_json_body(other), None);
        }
    }
}
