//! Request bodies must arrive within `body_read_timeout`: a client that
//! sends its headers and then trickles the body a byte at a time would
//! otherwise hold a connection and a handler for as long as it likes
//! (actix's `client_request_timeout` covers the headers only). The deadline
//! runs from the request's arrival; WebSocket upgrades are exempt (their
//! "body" is the session).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::{Payload, ServiceRequest};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::HttpMessage;
use futures_util::Stream;

/// The message of the I/O error a late body ends with; [`is_timeout`] knows it.
const TIMED_OUT: &str = "the request body did not arrive within body_read_timeout_secs";

/// Puts `req`'s body under a deadline of `limit`.
pub fn apply(req: &mut ServiceRequest, limit: Duration) {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade {
        return;
    }
    let inner = req.take_payload();
    let timed = Deadline {
        inner,
        sleep: Box::pin(tokio::time::sleep(limit)),
        done: false,
    };
    req.set_payload(Payload::Stream {
        payload: Box::pin(timed),
    });
}

/// Whether a payload error is this module's deadline.
pub fn is_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == io::ErrorKind::TimedOut)
}

struct Deadline {
    inner: Payload,
    sleep: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            if item.is_none() {
                self.done = true;
            }
            return Poll::Ready(item);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                TIMED_OUT,
            )))));
        }
        Poll::Pending
    }
}
