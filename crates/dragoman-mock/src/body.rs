//! The response body: either all at once, or streamed from a channel fed by a producer task. A
//! streamed body that hyper drops before it ended means the peer went away mid-response.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::server::Shared;

pub struct MockBody {
    inner: Inner,
}

enum Inner {
    Full(Option<Bytes>),
    Channel {
        rx: mpsc::Receiver<io::Result<Bytes>>,
        /// Present until the stream ended (or failed on purpose): dropping the body while it is
        /// present counts an early close.
        armed: Option<Arc<Shared>>,
        /// A cut received from the producer, returned on the next poll so that hyper flushes what
        /// it has buffered first (it flushes when the body is pending, and drops its buffer when the
        /// body fails).
        cut: Option<io::Error>,
    },
}

impl Drop for MockBody {
    fn drop(&mut self) {
        if let Inner::Channel {
            armed: Some(shared),
            ..
        } = &self.inner
        {
            shared.mark_closed_early();
        }
    }
}

impl MockBody {
    pub fn full(b: impl Into<Bytes>) -> MockBody {
        MockBody {
            inner: Inner::Full(Some(b.into())),
        }
    }

    pub fn empty() -> MockBody {
        MockBody {
            inner: Inner::Full(None),
        }
    }

    /// A streamed body; an `Err` item cuts the connection without ending the body properly.
    pub(crate) fn channel(rx: mpsc::Receiver<io::Result<Bytes>>, shared: Arc<Shared>) -> MockBody {
        MockBody {
            inner: Inner::Channel {
                rx,
                armed: Some(shared),
                cut: None,
            },
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Inner::Channel { rx, armed, cut } => {
                if let Some(e) = cut.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                match rx.poll_recv(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
                    Poll::Ready(Some(Err(e))) => {
                        // A cut on purpose: not the peer's doing.
                        *armed = None;
                        *cut = Some(e);
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Poll::Ready(None) => {
                        *armed = None;
                        Poll::Ready(None)
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Inner::Channel { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Channel { .. } => SizeHint::default(),
        }
    }
}
