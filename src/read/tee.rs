//! A response body streamed to the client while a copy is kept, up to a
//! limit: a large body is never held whole in memory, a small one is kept
//! once it has fully arrived.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Called once: with the whole body, or with None if it was larger than the
/// limit, failed, or was abandoned by the client.
pub type OnDone = Box<dyn FnOnce(Option<Bytes>) + Send>;

pub struct TeeBody {
    inner: Incoming,
    copy: Option<BytesMut>,
    limit: usize,
    on_done: Option<OnDone>,
}

impl TeeBody {
    pub fn new(inner: Incoming, limit: usize, on_done: OnDone) -> Self {
        // A declared length is reserved at once, so the copy is one
        // allocation of the body's size rather than doublings up to twice it.
        let declared = inner.size_hint().exact().unwrap_or(0);
        let reserve = usize::try_from(declared).unwrap_or(0).min(limit);
        TeeBody {
            inner,
            copy: Some(BytesMut::with_capacity(reserve)),
            limit,
            on_done: Some(on_done),
        }
    }

    fn done(&mut self, complete: bool) {
        if let Some(on_done) = self.on_done.take() {
            let copy = self.copy.take().filter(|_| complete).map(exact_size);
            on_done(copy);
        }
    }
}

/// The copy as it will be kept, for as long as `max_stale_s`: without the
/// spare capacity that growing it left (up to as much again as its length).
fn exact_size(copy: BytesMut) -> Bytes {
    if copy.capacity() - copy.len() > copy.len() / 16 {
        Bytes::copy_from_slice(&copy)
    } else {
        copy.freeze()
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(copy)) = (frame.data_ref(), this.copy.as_mut()) {
                    if copy.len() + data.len() > this.limit {
                        this.copy = None;
                    } else {
                        copy.extend_from_slice(data);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.done(false),
            Poll::Ready(None) => this.done(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        // A body dropped before its end (client gone) was not fully seen.
        // An empty body may be dropped without ever being polled.
        let complete = self.inner.is_end_stream();
        self.done(complete);
    }
}
