//! Server-streaming responses fed by a producer task that gives up on a stalled reader.
//!
//! The task gives up on a reader that stops reading instead of holding memory or a thread for it.
//!
//! A producer (an async task: it holds no blocking thread while it waits) sends items through
//! an [`Outlet`]; tonic reads them from the paired [`Feed`]. HTTP/2 flow control
//! means a client that stops reading stops tonic from polling the stream, so the channel fills
//! and the producer's send waits. If a send waits longer than the stall timeout, the producer
//! gives up: the buffered items are dropped at once (the receiver is taken out of the shared
//! slot), and whenever the transport polls the stream again it ends with DEADLINE_EXCEEDED.
//! If the client goes away, tonic drops the stream, which closes the channel, and the
//! producer's next send fails, so it stops too.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::task::AtomicWaker;
use tokio::sync::mpsc;
use tonic::Status;

use super::error::ApiError;

/// Responses buffered between a producer and the transport. Small: a response may carry a
/// thousand relationships (ExportBulkRelationships), and a stalled reader keeps its buffer
/// until the stall timeout.
const BUFFER: usize = 16;

/// What the producer and the response stream share.
struct Shared<T> {
    /// the receiving end, taken (and dropped) by the producer when the reader stalls, or by
    /// the stream when tonic drops it
    rx: Mutex<Option<mpsc::Receiver<Result<T, Status>>>>,
    /// the status to end the stream with, once the channel is drained or dropped
    failure: Mutex<Option<Status>>,
    /// wakes the stream after the producer took the receiver away
    waker: AtomicWaker,
}

impl<T> Shared<T> {
    fn take_rx(&self) -> Option<mpsc::Receiver<Result<T, Status>>> {
        self.rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// The producer's end.
pub(super) struct Outlet<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    shared: Arc<Shared<T>>,
    stall: Duration,
    /// the error a stalled reader's stream ends with
    stalled: fn(Duration) -> ApiError,
}

/// Why a send did not go through: the producer should stop either way.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stopped {
    /// the client went away
    Gone,
    /// the client stopped reading for longer than the stall timeout
    Stalled,
}

impl<T> Outlet<T> {
    /// Hands one item to the transport, waiting at most the stall timeout for room.
    pub(super) async fn send(&self, item: Result<T, Status>) -> Result<(), Stopped> {
        match tokio::time::timeout(self.stall, self.tx.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stopped::Gone),
            Err(_) => {
                let status: Status = (self.stalled)(self.stall).into();
                *self
                    .shared
                    .failure
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(status);
                // Frees every buffered item now, not when the connection closes.
                drop(self.shared.take_rx());
                self.shared.waker.wake();
                Err(Stopped::Stalled)
            }
        }
    }

    /// Resolves when the client has gone away (or the stream was given up on).
    pub(super) async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Sends an error as the stream's last item (if the reader is still there).
    pub(super) async fn fail(&self, err: ApiError) {
        let _ = self.send(Err(err.into())).await;
    }
}

/// The transport's end: a `Stream` of responses.
pub struct Feed<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Stream for Feed<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let shared = &self.shared;
        shared.waker.register(cx.waker());
        let mut rx = shared.rx.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = rx.as_mut() {
            match r.poll_recv(cx) {
                Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => *rx = None,
            }
        }
        drop(rx);
        let failure = shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Poll::Ready(failure.map(Err))
    }
}

impl<T> Drop for Feed<T> {
    fn drop(&mut self) {
        // Closes the channel, so the producer's next send fails and it stops.
        drop(self.shared.take_rx());
    }
}

/// A producer's outlet and the response stream it feeds; the producer gives up on a reader
/// that leaves it waiting for longer than `stall`.
pub(super) fn channel<T>(stall: Duration) -> (Outlet<T>, Feed<T>) {
    channel_with(BUFFER, stall, ApiError::ReaderStalled)
}

/// [`channel`] with `buffer` items of room, whose stalled reader's stream ends with
/// `stalled(stall)`.
pub(super) fn channel_with<T>(
    buffer: usize,
    stall: Duration,
    stalled: fn(Duration) -> ApiError,
) -> (Outlet<T>, Feed<T>) {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let shared = Arc::new(Shared {
        rx: Mutex::new(Some(rx)),
        failure: Mutex::new(None),
        waker: AtomicWaker::new(),
    });
    (
        Outlet {
            tx,
            shared: Arc::clone(&shared),
            stall,
            stalled,
        },
        Feed { shared },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    #[tokio::test]
    async fn items_flow_then_the_stream_ends() {
        let (out, mut stream) = channel::<u32>(Duration::from_secs(5));
        tokio::spawn(async move {
            for i in 0..200 {
                out.send(Ok(i)).await.unwrap();
            }
        });
        let got: Vec<u32> = (&mut stream).map(|r| r.unwrap()).collect().await;
        assert_eq!(got, (0..200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_stalled_reader_is_given_up_on_and_its_buffer_freed() {
        let (out, mut stream) = channel::<u32>(Duration::from_millis(50));
        let mut sent = 0;
        let stopped = loop {
            match out.send(Ok(sent)).await {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(stopped, Stopped::Stalled);
        assert_eq!(sent, BUFFER as u32);
        // The buffer is gone: the reader sees the failure straight away, not the old items.
        assert!(out.shared.rx.lock().unwrap().is_none());
        let first = stream.next().await.unwrap().unwrap_err();
        assert_eq!(first.code(), tonic::Code::DeadlineExceeded);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_dropped_stream_stops_the_producer() {
        let (out, stream) = channel::<u32>(Duration::from_secs(60));
        drop(stream);
        assert_eq!(out.send(Ok(1)).await, Err(Stopped::Gone));
    }
}
