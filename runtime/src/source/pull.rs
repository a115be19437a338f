//! A continuous pull from one JetStream consumer, with exact bookkeeping.
//!
//! async-nats' `Consumer::messages()` sends its pull requests from a
//! background task and learns that one went out through a channel. A
//! message the request fetched can overtake that notice; the stream then
//! counts the request's messages as still to come forever, stops asking for
//! more, and stalls: until a missed heartbeat is noticed if the server holds
//! no request, and for good if it holds one that is open and heartbeating.
//! Here the requests are sent by the task that reads the replies, so a
//! request is always booked before any of its messages.
//!
//! What the server does (checked against nats-server 2.9.10): a request
//! asks for `batch` messages and lives `expires`. One that fills ends
//! silently; one that expires ends with a `408` status whose
//! `Nats-Pending-Messages` header says how many it did not deliver. While a
//! request is open and idle the server sends a `100` heartbeat every
//! `idle_heartbeat`. It sends nothing to a reply subject nobody subscribes
//! to, so dropping a `Pull` strands no message on a dead request.

use std::time::Duration;

use async_nats::jetstream::{self, Message};
use async_nats::{StatusCode, Subscriber};
use futures::{FutureExt, StreamExt};

/// Why a pull stopped delivering. Every case means the same to the caller:
/// drop this pull and open a fresh one.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(
        "no heartbeat for {0:?} while a pull request was open (server restarted or connection lost?)"
    )]
    MissedHeartbeat(Duration),
    #[error("the server ended the pull request: {0}")]
    Ended(String),
    #[error("the reply subscription closed")]
    Closed,
    #[error("sending a pull request: {0}")]
    Request(#[from] async_nats::PublishError),
}

/// How a [`Pull`] asks for messages.
#[derive(Debug, Clone, Copy)]
pub struct PullShape {
    /// Messages on order at most; a new request goes out once half arrived.
    pub batch: usize,
    /// How long one request stays open on the server.
    pub expires: Duration,
    /// How often an open, idle request hears from the server.
    pub heartbeat: Duration,
}

/// An open pull on one consumer.
pub struct Pull {
    js: jetstream::Context,
    client: async_nats::Client,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    request_subject: String,
    inbox: String,
    replies: Subscriber,
    shape: PullShape,
    books: Books,
}

impl Pull {
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        consumer: &str,
        shape: PullShape,
    ) -> Result<Pull, async_nats::SubscribeError> {
        let client = js.client();
        let inbox = client.new_inbox();
        let replies = client.subscribe(inbox.clone()).await?;
        Ok(Pull {
            js: js.clone(),
            client,
            request_subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            inbox,
            replies,
            shape,
            books: Books::new(shape.batch),
        })
    }

    /// The next message, asking the server for more first when half of the
    /// batch or more has arrived.
    pub async fn next(&mut self) -> Result<Message, PullError> {
        // With something always on order, an open request always exists, so
        // silence for two heartbeats means the server has lost it.
        let silence = self.shape.heartbeat * 2;
        loop {
            if let Some(more) = self.books.to_request() {
                self.request(more).await?;
            }
            let reply = match tokio::time::timeout(silence, self.replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => return Err(PullError::Closed),
                Err(_) => return Err(PullError::MissedHeartbeat(silence)),
            };
            if let Some(message) = self.read(reply)? {
                return Ok(message);
            }
        }
    }

    /// Messages already received but not yet read, without waiting.
    pub fn take_buffered(&mut self) -> Vec<Message> {
        let mut buffered = Vec::new();
        while let Some(Some(reply)) = self.replies.next().now_or_never() {
            match self.read(reply) {
                Ok(Some(message)) => buffered.push(message),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        buffered
    }

    async fn request(&mut self, batch: usize) -> Result<(), PullError> {
        let PullShape {
            expires, heartbeat, ..
        } = self.shape;
        let request = format!(
            r#"{{"batch":{batch},"expires":{},"idle_heartbeat":{}}}"#,
            expires.as_nanos(),
            heartbeat.as_nanos()
        );
        self.client
            .publish_with_reply(
                self.request_subject.clone(),
                self.inbox.clone(),
                request.into(),
            )
            .await?;
        // Replies are read only by this task, after this: none of the
        // request's messages can be booked before the request is.
        self.books.requested(batch);
        Ok(())
    }

    /// Books one reply: a message is returned, a status is accounted for.
    fn read(&mut self, reply: async_nats::Message) -> Result<Option<Message>, PullError> {
        Ok(self.books.book(&reply)?.then(|| Message {
            message: reply,
            context: self.js.clone(),
        }))
    }
}

/// The count of messages on order: asked for by open requests and not yet
/// read, whether still on the server or already waiting in the
/// subscription. Kept apart from the I/O so every status is unit-tested.
#[derive(Debug)]
struct Books {
    batch: usize,
    on_order: usize,
}

impl Books {
    fn new(batch: usize) -> Self {
        Books {
            batch: batch.max(1),
            on_order: 0,
        }
    }

    /// How many to ask for now: a batch's worth topped up once half of it
    /// has arrived, nothing before.
    fn to_request(&self) -> Option<usize> {
        (self.on_order <= self.batch / 2).then(|| self.batch - self.on_order)
    }

    fn requested(&mut self, batch: usize) {
        self.on_order += batch;
    }

    /// Accounts for one reply; `true` when it is a message to hand on.
    fn book(&mut self, reply: &async_nats::Message) -> Result<bool, PullError> {
        match reply.status {
            None | Some(StatusCode::OK) => {
                self.on_order = self.on_order.saturating_sub(1);
                Ok(true)
            }
            Some(StatusCode::IDLE_HEARTBEAT) => Ok(false),
            Some(StatusCode::TIMEOUT) => {
                let undelivered = reply
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Pending-Messages"))
                    .and_then(|n| n.as_str().parse::<usize>().ok())
                    // Without the count the books cannot be kept: start over.
                    .ok_or_else(|| PullError::Ended(describe(reply)))?;
                self.on_order = self.on_order.saturating_sub(undelivered);
                Ok(false)
            }
            // 409 (consumer deleted, leadership change, limits exceeded),
            // 503 (no JetStream) and anything newer.
            Some(_) => Err(PullError::Ended(describe(reply))),
        }
    }
}

fn describe(reply: &async_nats::Message) -> String {
    let status = reply.status.map(|s| s.as_u16()).unwrap_or_default();
    match &reply.description {
        Some(description) => format!("{status} {description}"),
        None => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: Option<u16>, headers: &[(&str, &str)]) -> async_nats::Message {
        let mut map = async_nats::HeaderMap::new();
        headers.iter().for_each(|(k, v)| map.insert(*k, *v));
        async_nats::Message {
            subject: "_INBOX.test".into(),
            reply: None,
            payload: bytes::Bytes::new(),
            headers: (!headers.is_empty()).then_some(map),
            status: status.map(|s| StatusCode::from_u16(s).unwrap()),
            description: status.map(|_| "Request Timeout".to_string()),
            length: 0,
        }
    }

    #[test]
    fn asks_for_a_batch_then_tops_up_at_half() {
        let mut books = Books::new(10);
        assert_eq!(books.to_request(), Some(10));
        books.requested(10);
        assert_eq!(books.to_request(), None);
        for _ in 0..4 {
            assert!(books.book(&reply(None, &[])).unwrap());
        }
        assert_eq!(books.to_request(), None, "6 still on order");
        assert!(books.book(&reply(None, &[])).unwrap());
        assert_eq!(books.to_request(), Some(5), "topped up to a batch");
    }

    #[test]
    fn a_heartbeat_changes_nothing() {
        let mut books = Books::new(4);
        books.requested(4);
        assert!(!books.book(&reply(Some(100), &[])).unwrap());
        assert_eq!(books.on_order, 4);
    }

    #[test]
    fn an_expired_request_returns_what_it_did_not_deliver() {
        let mut books = Books::new(10);
        books.requested(10);
        books.book(&reply(None, &[])).unwrap();
        let expired = reply(Some(408), &[("Nats-Pending-Messages", "9")]);
        assert!(!books.book(&expired).unwrap());
        assert_eq!(books.on_order, 0);
        assert_eq!(books.to_request(), Some(10));
    }

    #[test]
    fn an_expiry_without_its_count_ends_the_pull() {
        let mut books = Books::new(10);
        books.requested(10);
        let err = books.book(&reply(Some(408), &[])).unwrap_err();
        assert!(
            matches!(err, PullError::Ended(ref m) if m.starts_with("408")),
            "{err}"
        );
    }

    #[test]
    fn other_statuses_end_the_pull() {
        for status in [409, 503] {
            let mut books = Books::new(1);
            let err = books.book(&reply(Some(status), &[])).unwrap_err();
            assert!(matches!(err, PullError::Ended(_)), "{status}: {err}");
        }
    }
}
