//! Connections served by hyper, under watch. hyper bounds the time to read
//! an HTTP/1 head, but nothing bounds an HTTP/2 connection that sends its
//! preface and then nothing, or that stays open with no stream, or a
//! kept-alive HTTP/1 connection between requests once a body was left
//! unread. So every hyper connection counts its requests in progress (until
//! their response bodies end) and is closed when it has had none for
//! `--header-timeout`; when the node drains, it is asked to finish
//! (HTTP/2 GOAWAY, HTTP/1 close after the current answer).
//!
//! Every request gets the connection's client address (`ClientIp`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use futures_util::future::BoxFuture;
use http_body::{Frame, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::peer::ClientIp;

/// Time a connection asked to finish (idle) has to do so.
pub(super) const FINISH: Duration = Duration::from_secs(1);

/// Requests in progress on one connection.
#[derive(Default)]
pub(super) struct Activity {
    pub(super) in_flight: AtomicUsize,
    /// Requests started, in all.
    pub(super) started: AtomicUsize,
    changed: Notify,
}

impl Activity {
    /// Resolves once no request has been in progress for `idle`.
    pub(super) async fn idle_for(&self, idle: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(idle) => return,
                    _ = changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

/// One request in progress; counted until dropped with its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.started.fetch_add(1, Ordering::AcqRel);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.changed.notify_waiters();
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// The router as hyper's service, counting requests.
#[derive(Clone)]
pub(super) struct Counted {
    pub(super) router: Router,
    pub(super) activity: Arc<Activity>,
    pub(super) client: ClientIp,
}

impl<B> hyper::service::Service<Request<B>> for Counted
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<CountedBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, mut req: Request<B>) -> Self::Future {
        let guard = InFlight::start(&self.activity);
        req.extensions_mut().insert(self.client);
        let call = self.router.clone().oneshot(req.map(Body::new));
        Box::pin(async move {
            let resp = call.await?;
            Ok(resp.map(|body| CountedBody { body, _guard: guard }))
        })
    }
}

/// A response body that keeps its request counted until it ends.
pub(super) struct CountedBody {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves `io` with hyper until the connection ends, has been idle for
/// `idle`, or `drain` fires.
pub(super) async fn serve<I>(
    hyper: &auto::Builder<TokioExecutor>,
    router: &Router,
    io: I,
    client: ClientIp,
    idle: Duration,
    drain: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let svc = Counted {
        router: router.clone(),
        activity: activity.clone(),
        client,
    };
    let conn = hyper.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let draining = tokio::select! {
        _ = conn.as_mut() => return,
        _ = activity.idle_for(idle) => false,
        _ = drain.cancelled() => true,
    };
    conn.as_mut().graceful_shutdown();
    if draining {
        // Streams under hyper end as the hub closes them; the server's
        // grace period bounds the rest.
        let _ = conn.await;
    } else {
        let _ = tokio::time::timeout(FINISH, conn).await;
    }
}
