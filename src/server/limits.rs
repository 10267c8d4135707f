//! Transport-level admission in front of the gRPC services: shutdown, load shedding, sizes.
//!
//! Refuse new calls while shutting down, shed calls over the global in-flight limit with
//! RESOURCE_EXHAUSTED at once instead of queueing them, and refuse request messages over the
//! size limit. Health checks are never shed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::codegen::http::{Request, Response};
use tower::{Layer, Service};

/// The path prefix of `grpc.health.v1.Health`, exempt from shedding and shutdown refusal.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Shared state of the admission layer.
#[derive(Debug)]
pub struct Admission {
    /// `None`: no limit on calls in flight
    permits: Option<Arc<Semaphore>>,
    /// set once a shutdown starts
    shutting_down: AtomicBool,
    /// the largest request message accepted, in bytes
    max_message_size: usize,
}

impl Admission {
    /// At most `max_in_flight` calls at once (0: no limit), request messages of at most
    /// `max_message_size` bytes.
    pub fn new(max_in_flight: usize, max_message_size: usize) -> Arc<Admission> {
        Arc::new(Admission {
            permits: (max_in_flight > 0).then(|| Arc::new(Semaphore::new(max_in_flight))),
            shutting_down: AtomicBool::new(false),
            max_message_size,
        })
    }

    /// From now on, every call except health checks is refused with UNAVAILABLE.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Admits a call to `path`: `Ok(None)` for an exempt call, `Ok(Some(permit))` for one that
    /// holds a slot until its response ends, or the status that refuses it.
    fn admit(&self, path: &str) -> Result<Option<OwnedSemaphorePermit>, Status> {
        if path.starts_with(HEALTH_PREFIX) {
            return Ok(None);
        }
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the server is shutting down"));
        }
        match &self.permits {
            None => Ok(None),
            Some(sem) => Arc::clone(sem).try_acquire_owned().map(Some).map_err(|_| {
                Status::resource_exhausted(
                    "the server is overloaded: too many requests in flight, retry later",
                )
            }),
        }
    }
}

/// The tower layer applying an [`Admission`].
#[derive(Debug, Clone)]
pub struct AdmissionLayer(pub Arc<Admission>);

impl<S> Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> AdmissionService<S> {
        AdmissionService {
            inner,
            admission: Arc::clone(&self.0),
        }
    }
}

/// The service of [`AdmissionLayer`].
#[derive(Debug, Clone)]
pub struct AdmissionService<S> {
    inner: S,
    admission: Arc<Admission>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> Service<Request<Body>> for AdmissionService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let permit = match self.admission.admit(req.uri().path()) {
            Ok(p) => p,
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        let limit = self.admission.max_message_size;
        let req = req.map(|b| Body::new(SizeLimitedBody::new(b, limit)));
        // The service that was polled ready handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            Ok(match permit {
                Some(permit) => response.map(|b| {
                    Body::new(PermitBody {
                        inner: b,
                        _permit: permit,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that holds an in-flight slot until it is finished or dropped, so a
/// streaming call counts for as long as it streams.
struct PermitBody {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for PermitBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that reads the gRPC message frames going by (one flag byte, a 4-byte
/// big-endian length, the message) and fails with RESOURCE_EXHAUSTED, as grpc-go does, as soon as
/// a frame announces a message over the limit, before any of it is buffered.
struct SizeLimitedBody {
    inner: Body,
    limit: usize,
    /// the frame header read so far
    header: [u8; 5],
    /// how many header bytes are in `header`
    have: usize,
    /// message bytes left in the current frame
    remaining: usize,
    /// an oversized frame was seen: the body is over
    failed: bool,
}

impl SizeLimitedBody {
    fn new(inner: Body, limit: usize) -> SizeLimitedBody {
        SizeLimitedBody {
            inner,
            limit,
            header: [0; 5],
            have: 0,
            remaining: 0,
            failed: false,
        }
    }

    /// Follows the frames through `data`.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let [_, a, b, c, d] = self.header;
                let len = u32::from_be_bytes([a, b, c, d]);
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > self.limit {
                    return Err(Status::resource_exhausted(format!(
                        "grpc: received message larger than max ({len} vs. {})",
                        self.limit
                    )));
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

impl HttpBody for SizeLimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref()
            && let Err(status) = this.scan(data)
        {
            this.failed = true;
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len as usize));
        f
    }

    #[test]
    fn frames_over_the_limit_are_refused_wherever_the_chunks_split() {
        let mut stream = frame(10);
        stream.extend(frame(100));
        stream.extend(frame(101));
        // every split point into two chunks: the third frame is refused, the first two pass
        for split in 0..stream.len() {
            let mut b = SizeLimitedBody::new(Body::empty(), 100);
            let refused = match b.scan(&stream[..split]) {
                Err(s) => s,
                Ok(()) => b
                    .scan(&stream[split..])
                    .err()
                    .unwrap_or_else(|| panic!("not refused at split {split}")),
            };
            assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
            assert!(refused.message().contains("101 vs. 100"), "{refused:?}");
        }
        // byte by byte, frames at the limit pass
        let mut b = SizeLimitedBody::new(Body::empty(), 100);
        for byte in &stream[..15 + 105] {
            b.scan(std::slice::from_ref(byte)).unwrap();
        }
    }

    #[test]
    fn the_limit_counts_calls_in_flight_and_spares_health() {
        let a = Admission::new(1, 100);
        let held = a.admit("/authzed.api.v1.SchemaService/ReadSchema").unwrap();
        assert!(held.is_some());
        let err = a
            .admit("/authzed.api.v1.PermissionsService/CheckPermission")
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(a.admit("/grpc.health.v1.Health/Check").is_ok());
        drop(held);
        assert!(a.admit("/authzed.api.v1.SchemaService/ReadSchema").is_ok());
        a.begin_shutdown();
        let err = a
            .admit("/authzed.api.v1.SchemaService/ReadSchema")
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(a.admit("/grpc.health.v1.Health/Check").is_ok());
    }
}
