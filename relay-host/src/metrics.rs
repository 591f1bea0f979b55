//! Prometheus metrics and the small HTTP server that exposes them.
//!
//! Everything is registered once in [`Metrics::new`]; guest sessions get a `GuestMetrics` of
//! pre-resolved handles (atomic counters, no label lookup on the hot path) and the router
//! removes a guest's series when the guest goes away, so the label set stays bounded by the
//! guests actually on the host. Per-guest series are labelled with the instance UUID from
//! libvirt, never with anything the guest says.
//!
//! The endpoint serves `GET /metrics` in the OpenMetrics text format over HTTP/1.1 (hyper),
//! meant for a local address: it has no authentication and exposes nothing but counters.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use relay_protocol::Uuid;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Why a frame did not make it through the relay (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The guest exceeded its frame rate.
    RateLimited,
    /// The guest's queue towards the uplink was full.
    QueueFullFromGuest,
    /// The guest's queue from the controller was full (the guest does not read).
    QueueFullToGuest,
    /// Not newer than the last frame of its epoch: replayed or duplicated.
    Replay,
    /// Bytes that are not a frame (one count per discarded run; bytes are counted separately).
    Garbage,
    /// The uplink was down and its backlog full: the oldest message went.
    UplinkBacklog,
    /// A frame from the controller that is not exactly one valid frame.
    InvalidFromController,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::RateLimited,
        DropReason::QueueFullFromGuest,
        DropReason::QueueFullToGuest,
        DropReason::Replay,
        DropReason::Garbage,
        DropReason::UplinkBacklog,
        DropReason::InvalidFromController,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RateLimited => "rate_limited",
            DropReason::QueueFullFromGuest => "queue_full_from_guest",
            DropReason::QueueFullToGuest => "queue_full_to_guest",
            DropReason::Replay => "replay",
            DropReason::Garbage => "garbage",
            DropReason::UplinkBacklog => "uplink_backlog",
            DropReason::InvalidFromController => "invalid_from_controller",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GuestLabels {
    instance: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    instance: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HookLabels {
    event: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueLabels {
    instance: String,
    direction: String,
}

struct Inner {
    registry: Registry,
    guests: Gauge,
    sessions: Gauge,
    frames_from_guest: Family<GuestLabels, Counter>,
    bytes_from_guest: Family<GuestLabels, Counter>,
    frames_to_guest: Family<GuestLabels, Counter>,
    bytes_to_guest: Family<GuestLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    discarded_bytes: Family<GuestLabels, Counter>,
    auth_failures: Family<GuestLabels, Counter>,
    guest_reconnects: Family<GuestLabels, Counter>,
    queue_depth: Family<QueueLabels, Gauge>,
    unroutable: Counter,
    uplink_connected: Gauge,
    uplink_reconnects: Counter,
    uplink_connect_errors: Counter,
    uplink_queue_depth: Gauge,
    hook_notifications: Family<HookLabels, Counter>,
    hook_rejected: Counter,
    ovs: crate::ovs::OvsMetrics,
}

/// The relay's metrics; cheap to clone (one shared registry).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("relay");
        let guests = Gauge::default();
        let sessions = Gauge::default();
        let frames_from_guest = Family::default();
        let bytes_from_guest = Family::default();
        let frames_to_guest = Family::default();
        let bytes_to_guest = Family::default();
        let dropped = Family::default();
        let discarded_bytes = Family::default();
        let auth_failures = Family::default();
        let guest_reconnects = Family::default();
        let queue_depth = Family::default();
        let unroutable = Counter::default();
        let uplink_connected = Gauge::default();
        let uplink_reconnects = Counter::default();
        let uplink_connect_errors = Counter::default();
        let uplink_queue_depth = Gauge::default();
        let hook_notifications = Family::<HookLabels, Counter>::default();
        let hook_rejected = Counter::default();
        let r = &mut registry;
        r.register(
            "guests",
            "Guests with a relay channel known from discovery",
            guests.clone(),
        );
        r.register(
            "guest_sessions",
            "Guest channel sockets currently connected",
            sessions.clone(),
        );
        r.register(
            "frames_from_guest",
            "Frames forwarded from a guest to the controller",
            frames_from_guest.clone(),
        );
        r.register(
            "bytes_from_guest",
            "Bytes of frames forwarded from a guest to the controller",
            bytes_from_guest.clone(),
        );
        r.register(
            "frames_to_guest",
            "Frames written to a guest's channel",
            frames_to_guest.clone(),
        );
        r.register(
            "bytes_to_guest",
            "Bytes of frames written to a guest's channel",
            bytes_to_guest.clone(),
        );
        r.register(
            "frames_dropped",
            "Frames dropped by the relay, by reason",
            dropped.clone(),
        );
        r.register(
            "guest_discarded_bytes",
            "Bytes from a guest that were not part of any frame (stale or garbage)",
            discarded_bytes.clone(),
        );
        r.register(
            "guest_auth_failures",
            "Frames from a guest the controller rejected (bad MAC, replay, old epoch)",
            auth_failures.clone(),
        );
        r.register(
            "guest_reconnects",
            "Times the relay (re)opened a guest's channel",
            guest_reconnects.clone(),
        );
        r.register(
            "guest_queue_depth",
            "Frames waiting in a guest's queue, by direction",
            queue_depth.clone(),
        );
        r.register(
            "frames_unroutable",
            "Frames from the controller for an instance this host does not serve",
            unroutable.clone(),
        );
        r.register(
            "uplink_connected",
            "1 while the uplink to the controller is registered, else 0",
            uplink_connected.clone(),
        );
        r.register(
            "uplink_reconnects",
            "Uplink connections established after the first",
            uplink_reconnects.clone(),
        );
        r.register(
            "uplink_connect_errors",
            "Failed uplink connection attempts (network, TLS or registration)",
            uplink_connect_errors.clone(),
        );
        r.register(
            "uplink_queue_depth",
            "Guest messages waiting for the uplink",
            uplink_queue_depth.clone(),
        );
        r.register(
            "hook_notifications",
            "Notifications accepted from the libvirt hook, by event",
            hook_notifications.clone(),
        );
        r.register(
            "hook_rejected",
            "Datagrams on the hook socket that were not a valid notification",
            hook_rejected.clone(),
        );
        // Both series exist from the start, so a rate over them is defined before the first.
        for event in crate::hook::HookEvent::ALL {
            let _ = hook_notifications.get_or_create_owned(&HookLabels {
                event: event.as_str().into(),
            });
        }
        let ovs = crate::ovs::OvsMetrics::register(r);
        Metrics {
            inner: Arc::new(Inner {
                registry,
                guests,
                sessions,
                frames_from_guest,
                bytes_from_guest,
                frames_to_guest,
                bytes_to_guest,
                dropped,
                discarded_bytes,
                auth_failures,
                guest_reconnects,
                queue_depth,
                unroutable,
                uplink_connected,
                uplink_reconnects,
                uplink_connect_errors,
                uplink_queue_depth,
                hook_notifications,
                hook_rejected,
                ovs,
            }),
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// The handles of one guest's series (created on first use).
    pub(crate) fn guest(&self, instance: Uuid) -> GuestMetrics {
        let i = &self.inner;
        let id = instance.to_string();
        let g = GuestLabels {
            instance: id.clone(),
        };
        let q = |direction: &str| QueueLabels {
            instance: id.clone(),
            direction: direction.into(),
        };
        let d = |reason: DropReason| {
            i.dropped.get_or_create_owned(&DropLabels {
                instance: id.clone(),
                reason: reason.as_str().into(),
            })
        };
        // Created now so that the uplink, which has no handles, finds it (`backlog_drop`).
        d(DropReason::UplinkBacklog);
        GuestMetrics {
            frames_from: i.frames_from_guest.get_or_create_owned(&g),
            bytes_from: i.bytes_from_guest.get_or_create_owned(&g),
            frames_to: i.frames_to_guest.get_or_create_owned(&g),
            bytes_to: i.bytes_to_guest.get_or_create_owned(&g),
            discarded_bytes: i.discarded_bytes.get_or_create_owned(&g),
            auth_failures: i.auth_failures.get_or_create_owned(&g),
            reconnects: i.guest_reconnects.get_or_create_owned(&g),
            to_guest_depth: i.queue_depth.get_or_create_owned(&q("to_guest")),
            from_guest_depth: i.queue_depth.get_or_create_owned(&q("from_guest")),
            rate_limited: d(DropReason::RateLimited),
            queue_full_from: d(DropReason::QueueFullFromGuest),
            queue_full_to: d(DropReason::QueueFullToGuest),
            replay: d(DropReason::Replay),
            garbage: d(DropReason::Garbage),
            invalid_from_controller: d(DropReason::InvalidFromController),
            sessions: i.sessions.clone(),
        }
    }

    /// Forgets a guest's series (it went away); handles still held only stop being exported.
    pub(crate) fn remove_guest(&self, instance: Uuid) {
        let i = &self.inner;
        let id = instance.to_string();
        let g = GuestLabels {
            instance: id.clone(),
        };
        for f in [
            &i.frames_from_guest,
            &i.bytes_from_guest,
            &i.frames_to_guest,
            &i.bytes_to_guest,
            &i.discarded_bytes,
            &i.auth_failures,
            &i.guest_reconnects,
        ] {
            f.remove(&g);
        }
        for direction in ["to_guest", "from_guest"] {
            i.queue_depth.remove(&QueueLabels {
                instance: id.clone(),
                direction: direction.into(),
            });
        }
        for reason in DropReason::ALL {
            i.dropped.remove(&DropLabels {
                instance: id.clone(),
                reason: reason.as_str().into(),
            });
        }
    }

    /// A guest message the uplink backlog had to let go; counted while the guest is known.
    pub(crate) fn backlog_drop(&self, instance: Uuid) {
        let labels = DropLabels {
            instance: instance.to_string(),
            reason: DropReason::UplinkBacklog.as_str().into(),
        };
        if let Some(c) = self.inner.dropped.get(&labels) {
            c.inc();
        }
    }

    pub(crate) fn set_guests(&self, n: usize) {
        self.inner.guests.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn unroutable(&self) {
        self.inner.unroutable.inc();
    }

    pub(crate) fn hook_notification(&self, event: crate::hook::HookEvent) {
        self.inner
            .hook_notifications
            .get_or_create(&HookLabels {
                event: event.as_str().into(),
            })
            .inc();
    }

    pub(crate) fn hook_rejected(&self) {
        self.inner.hook_rejected.inc();
    }

    /// The OVS programmer's handles (`relay_ovs_*`).
    pub fn ovs(&self) -> crate::ovs::OvsMetrics {
        self.inner.ovs.clone()
    }

    pub(crate) fn uplink(&self) -> UplinkMetrics {
        let i = &self.inner;
        UplinkMetrics {
            connected: i.uplink_connected.clone(),
            reconnects: i.uplink_reconnects.clone(),
            connect_errors: i.uplink_connect_errors.clone(),
            queue_depth: i.uplink_queue_depth.clone(),
        }
    }
}

/// One guest's metric handles.
#[derive(Debug, Clone)]
pub(crate) struct GuestMetrics {
    pub frames_from: Counter,
    pub bytes_from: Counter,
    pub frames_to: Counter,
    pub bytes_to: Counter,
    pub discarded_bytes: Counter,
    pub auth_failures: Counter,
    pub reconnects: Counter,
    pub to_guest_depth: Gauge,
    pub from_guest_depth: Gauge,
    pub rate_limited: Counter,
    pub queue_full_from: Counter,
    pub queue_full_to: Counter,
    pub replay: Counter,
    pub garbage: Counter,
    pub invalid_from_controller: Counter,
    pub sessions: Gauge,
}

/// The uplink's metric handles.
#[derive(Debug, Clone)]
pub(crate) struct UplinkMetrics {
    pub connected: Gauge,
    pub reconnects: Counter,
    pub connect_errors: Counter,
    pub queue_depth: Gauge,
}

/// Serves `GET /metrics` on `listener` until `shutdown`; connections in progress get a short
/// grace period to finish.
pub async fn serve(listener: TcpListener, metrics: Metrics, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(peer = %peer, error = %e, "metrics: connection ended with an error");
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), connections.wait()).await;
}

fn respond<B>(req: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Bytes::from(metrics.encode()),
        ),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found; metrics are at /metrics\n"),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"method not allowed\n"),
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn guest_series_are_labelled_and_removed() {
        let m = Metrics::new();
        let id = Uuid::from_u128(7);
        let g = m.guest(id);
        g.rate_limited.inc_by(3);
        g.frames_from.inc();
        let text = m.encode();
        let line =
            format!("relay_frames_dropped_total{{instance=\"{id}\",reason=\"rate_limited\"}} 3");
        assert!(text.contains(&line), "{text}");
        m.remove_guest(id);
        assert!(!m.encode().contains(&id.to_string()));
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let m = Metrics::new();
        m.uplink().connected.set(1);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, m.clone(), shutdown.clone()));

        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("relay_uplink_connected 1"), "{resp}");

        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");

        shutdown.cancel();
        server.await.unwrap();
    }
}
