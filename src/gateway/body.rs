//! A streaming call's request body read as it arrives: JSON messages, one after another
//! (concatenated or separated by whitespace), each handed on as soon as it is complete, as
//! grpc-gateway's stream decoder does. A watch stream can so add and cancel watchers for as
//! long as its request body stays open.
//!
//! Invariants: at most one message (plus one received chunk) is buffered, and a message may not
//! exceed the given bound; a message that is not JSON yields one `Unknown` error and ends the
//! stream; nothing is read before the consumer asks for it.

use axum::body::{Body, Bytes};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tonic::Status;

/// What the decoder holds between messages.
struct Decoder<B> {
    chunks: B,
    buf: Vec<u8>,
    ended: bool,
    failed: bool,
    max: usize,
}

/// Tries to take one complete message from the front of `buf`: `Ok(None)` when more bytes are
/// needed (or only whitespace is left).
fn take_one<T: DeserializeOwned>(buf: &mut Vec<u8>) -> Result<Option<T>, serde_json::Error> {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<T>();
    match it.next() {
        None => {
            buf.clear();
            Ok(None)
        }
        Some(Ok(v)) => {
            let used = it.byte_offset();
            buf.drain(..used);
            Ok(Some(v))
        }
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => Err(e),
    }
}

/// The messages of `body`, decoded one at a time as bytes arrive; a message over `max` bytes
/// ends the stream with `ResourceExhausted`.
pub fn messages<T: DeserializeOwned + Send + 'static>(
    body: Body,
    max: usize,
) -> impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static {
    messages_from(body.into_data_stream(), max)
}

/// As [`messages`], over any stream of body chunks.
pub fn messages_from<T, B, E>(
    chunks: B,
    max: usize,
) -> impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static
where
    T: DeserializeOwned + Send + 'static,
    B: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let start = Decoder {
        chunks,
        buf: Vec::new(),
        ended: false,
        failed: false,
        max,
    };
    Box::pin(futures::stream::unfold(start, |mut d| async move {
        if d.failed {
            return None;
        }
        loop {
            match take_one::<T>(&mut d.buf) {
                Ok(Some(v)) => return Some((Ok(v), d)),
                Err(e) => {
                    d.failed = true;
                    return Some((Err(Status::unknown(e.to_string())), d));
                }
                Ok(None) if d.ended => {
                    if d.buf.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    d.failed = true;
                    return Some((Err(Status::unknown("unexpected EOF".to_string())), d));
                }
                Ok(None) => {}
            }
            if d.buf.len() > d.max {
                d.failed = true;
                return Some((
                    Err(Status::resource_exhausted(format!(
                        "a request message of over {} bytes",
                        d.max
                    ))),
                    d,
                ));
            }
            match d.chunks.next().await {
                Some(Ok(bytes)) => d.buf.extend_from_slice(&bytes),
                Some(Err(e)) => {
                    d.failed = true;
                    return Some((Err(Status::unknown(e.to_string())), d));
                }
                None => d.ended = true,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct M {
        a: u32,
    }

    fn chunks(parts: &[&'static str]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p.as_bytes())))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn messages_split_across_chunks_come_out_whole_and_in_order() {
        let got: Vec<Result<M, Status>> = messages_from(
            chunks(&["{\"a\":", "1}{\"a\"", ":2}\n \n{\"a\":3}", "  "]),
            1024,
        )
        .collect()
        .await;
        let got: Vec<u32> = got
            .into_iter()
            .map(|m| m.map(|m| m.a).unwrap_or(0))
            .collect();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_bad_or_truncated_message_ends_the_stream_with_unknown() {
        let got: Vec<Result<M, Status>> =
            messages_from(chunks(&["{\"a\":1} nonsense {\"a\":2}"]), 1024)
                .collect()
                .await;
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert!(got[1]
            .as_ref()
            .is_err_and(|s| s.code() == tonic::Code::Unknown));
        let got: Vec<Result<M, Status>> =
            messages_from(chunks(&["{\"a\":1"]), 1024).collect().await;
        assert!(matches!(got.as_slice(), [Err(s)] if s.code() == tonic::Code::Unknown));
    }

    #[tokio::test]
    async fn a_message_over_the_bound_is_refused() {
        let long = Box::leak(format!("{{\"a\":{}", " ".repeat(100)).into_boxed_str());
        let got: Vec<Result<M, Status>> = messages_from(chunks(&[long, "1}"]), 50).collect().await;
        assert!(matches!(got.as_slice(), [Err(s)] if s.code() == tonic::Code::ResourceExhausted));
    }
}
