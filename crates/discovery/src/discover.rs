//! From a changing set of endpoint URLs to the balancer's insertions and
//! removals: a tower [`Discover`](tower::discover::Discover).
//!
//! The balancer wants changes (`Change::Insert(key, service)`,
//! `Change::Remove(key)`); a source publishes whole sets. Each new set is
//! compared with the last one, and the difference becomes changes, keyed
//! by URL:
//!
//! ```text
//!   {a, b}  ──►  {b, c}      Remove(a), Insert(c, Endpoint(c))
//! ```
//!
//! The stream is polled by the balancer on every call it is asked to take,
//! so a change reaches it with the next call after it was published. It
//! never ends: if its source stops (a fixed set has nothing more to say),
//! the endpoints it has stay.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::WatchStream;
use tower::discover::Change;

use crate::{
    endpoint::{Endpoint, EndpointSettings},
    source::{Endpoints, Source},
    view::ViewInner,
};

pub(crate) struct Discovered {
    upstream: String,
    settings: EndpointSettings,
    /// Every new set the source publishes, the current one first.
    sets: WatchStream<Endpoints>,
    /// The set the balancer holds (once the queued changes are taken).
    current: Endpoints,
    /// Changes computed from the last set, not yet taken by the balancer.
    changes: VecDeque<Change<String, Endpoint>>,
    view: Arc<ViewInner>,
    /// Kept so the source's channel stays open (a fixed set has no task).
    _source: Source,
    ended: bool,
}

impl Discovered {
    pub(crate) fn new(
        upstream: &str,
        source: Source,
        settings: EndpointSettings,
        view: Arc<ViewInner>,
    ) -> Self {
        Self {
            upstream: upstream.to_owned(),
            settings,
            sets: WatchStream::new(source.endpoints.clone()),
            current: Endpoints::new(),
            changes: VecDeque::new(),
            view,
            _source: source,
            ended: false,
        }
    }

    fn apply(&mut self, set: Endpoints) {
        for gone in self.current.difference(&set) {
            tracing::info!(upstream = %self.upstream, endpoint = %gone, "endpoint removed");
            self.view.remove(gone);
            self.changes.push_back(Change::Remove(gone.clone()));
        }
        let mut held = Endpoints::new();
        for url in &set {
            if self.current.contains(url) {
                held.insert(url.clone());
                continue;
            }
            match Endpoint::new(&self.upstream, url, &self.settings) {
                Ok((endpoint, handle)) => {
                    tracing::info!(upstream = %self.upstream, endpoint = %url, "endpoint added");
                    self.view.insert(handle);
                    self.changes
                        .push_back(Change::Insert(url.clone(), endpoint));
                    held.insert(url.clone());
                }
                // Not held, so the next set tries it again.
                Err(error) => tracing::warn!(
                    upstream = %self.upstream, endpoint = %url, error = format!("{error:#}"),
                    "endpoint ignored"
                ),
            }
        }
        self.current = held;
    }
}

impl Stream for Discovered {
    type Item = Result<Change<String, Endpoint>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.changes.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if this.ended {
                // Nothing will change any more; the balancer keeps what it has.
                return Poll::Pending;
            }
            match this.sets.poll_next_unpin(cx) {
                Poll::Ready(Some(set)) => this.apply(set),
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
