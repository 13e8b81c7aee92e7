//! One connection's clocks: how long it may sit idle between requests, and how long a request's
//! headers may take.
//!
//! hyper's own header timeout starts when a connection becomes ready for its next request, so it
//! bounds the idle time and the header time together, with one value. They are different limits.
//! An idle keep-alive connection is a client's pool doing its job (Go's `http.Transport` keeps
//! them 90 s, and a server that closes first races the client's next request on that
//! connection); headers that trickle in are a slow or hostile client holding a slot. So the
//! connection's reads go through [`TimedIo`], which knows from [`Watch`] whether a request is in
//! the service and runs one of two clocks while none is:
//!
//! - *idle*: from the end of a response until the first byte of the next request; when it runs
//!   out the connection ends as if the client had closed it (a clean EOF, no error).
//! - *header*: from a new connection, or the first byte of a request, until the service receives
//!   the request; when it runs out the read fails with `TimedOut` and hyper drops the connection.
//!
//! While a request is in the service (from the call until hyper drops its response body, i.e. the
//! response is written) no clock runs: the body has the router's own timeout, and generation
//! takes as long as it takes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The two clocks' lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clocks {
    /// Between a response and the next request's first byte.
    pub(crate) idle: Duration,
    /// From a new connection or a request's first byte until the request is read.
    pub(crate) header: Duration,
}

/// Requests started and finished on one connection, shared by its reader and its service.
#[derive(Debug, Default)]
struct Counts {
    started: AtomicU64,
    finished: AtomicU64,
    /// The reader, woken when a request finishes: a read that found a request in the service ran
    /// no clock, and hyper need not read again once the response is written.
    reader: AtomicWaker,
}

/// The service's side of a connection's counts.
#[derive(Debug, Clone)]
pub(crate) struct Watch(Arc<Counts>);

impl Watch {
    /// Counts a request into the service; the returned guard counts it out when dropped (put it
    /// in the response body: hyper drops that once the response is written).
    pub(crate) fn request(&self) -> Finished {
        self.0.started.fetch_add(1, Ordering::Release);
        Finished(Arc::clone(&self.0))
    }
}

/// Counts a request out of the service when dropped.
#[derive(Debug)]
pub(crate) struct Finished(Arc<Counts>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Release);
        self.0.reader.wake();
    }
}

/// Which clock runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// A request is in the service.
    Off,
    /// Waiting for a request to begin, since `after` requests had finished.
    Idle { after: u64 },
    /// A request's bytes are arriving, since `after` requests had finished.
    Header { after: u64 },
}

/// A connection's socket with the idle and header clocks on its reads.
#[derive(Debug)]
pub(crate) struct TimedIo<T> {
    inner: T,
    counts: Arc<Counts>,
    clocks: Clocks,
    clock: Clock,
    deadline: Pin<Box<Sleep>>,
}

impl<T> TimedIo<T> {
    /// Wraps a new connection: its first request's headers must arrive within the header clock.
    pub(crate) fn new(inner: T, clocks: Clocks) -> Self {
        Self {
            inner,
            counts: Arc::default(),
            clocks,
            clock: Clock::Header { after: 0 },
            deadline: Box::pin(tokio::time::sleep(clocks.header)),
        }
    }

    /// The handle the connection's service counts requests with.
    pub(crate) fn watch(&self) -> Watch {
        Watch(Arc::clone(&self.counts))
    }

    fn start(&mut self, clock: Clock, length: Duration) {
        self.clock = clock;
        self.deadline.as_mut().reset(Instant::now() + length);
    }

    /// Whether a request is in the service.
    fn busy(&self) -> bool {
        self.counts.started.load(Ordering::Acquire) > self.counts.finished.load(Ordering::Acquire)
    }

    /// Moves the clocks on after a read that brought bytes (`got`) or not.
    fn observe(&mut self, got: bool) {
        let started = self.counts.started.load(Ordering::Acquire);
        let finished = self.counts.finished.load(Ordering::Acquire);
        if started > finished {
            self.clock = Clock::Off;
            return;
        }
        match self.clock {
            // The clock belongs to a request cycle that has ended: a new cycle begins.
            Clock::Off => self.start(Clock::Idle { after: finished }, self.clocks.idle),
            Clock::Idle { after } | Clock::Header { after } if after != finished => {
                self.start(Clock::Idle { after: finished }, self.clocks.idle);
            }
            _ => {}
        }
        if got && let Clock::Idle { after } = self.clock {
            self.start(Clock::Header { after }, self.clocks.header);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.observe(buf.filled().len() > before);
        if read.is_ready() {
            return read;
        }
        if this.clock == Clock::Off {
            this.counts.reader.register(cx.waker());
            // The request may have finished since `observe` looked.
            if !this.busy() {
                cx.waker().wake_by_ref();
            }
            return read;
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            // Nothing read: the connection ends as if the client had closed it.
            Poll::Ready(()) if matches!(this.clock, Clock::Idle { .. }) => Poll::Ready(Ok(())),
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a request's headers did not arrive in time",
            ))),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response body that counts its request out of the service when hyper drops it.
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    inner: B,
    _finished: Finished,
}

impl<B> Tracked<B> {
    /// `inner`, counted out by `finished`.
    pub(crate) fn new(inner: B, finished: Finished) -> Self {
        Self {
            inner,
            _finished: finished,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CLOCKS: Clocks = Clocks {
        idle: Duration::from_secs(5),
        header: Duration::from_secs(1),
    };

    #[tokio::test(start_paused = true)]
    async fn a_silent_new_connection_gets_the_header_clock() {
        let (_client, server) = tokio::io::duplex(64);
        let mut io = TimedIo::new(server, CLOCKS);
        let started = Instant::now();
        let err = io.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), CLOCKS.header);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_response_the_idle_clock_runs_then_a_request_restarts_the_header_one() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = TimedIo::new(server, CLOCKS);
        let watch = io.watch();
        client.write_all(b"GET").await.unwrap();
        assert_eq!(io.read(&mut [0; 8]).await.unwrap(), 3);
        // A request in the service: reads wait as long as it takes.
        let finished = watch.request();
        let long = tokio::time::timeout(Duration::from_secs(60), io.read(&mut [0; 8])).await;
        assert!(long.is_err(), "no clock runs while a request is served");
        drop(finished);
        // Idle: the connection ends cleanly after the idle clock, not the header one.
        let started = Instant::now();
        assert_eq!(io.read(&mut [0; 8]).await.unwrap(), 0);
        assert_eq!(started.elapsed(), CLOCKS.idle);
        // A next request's first bytes start the header clock.
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = TimedIo::new(server, CLOCKS);
        drop(io.watch().request());
        tokio::time::sleep(Duration::from_secs(4)).await;
        client.write_all(b"G").await.unwrap();
        assert_eq!(io.read(&mut [0; 8]).await.unwrap(), 1);
        let started = Instant::now();
        let err = io.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), CLOCKS.header);
    }
}
