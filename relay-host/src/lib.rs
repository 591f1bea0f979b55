//! The relay host daemon: finds the guests with a relay channel through libvirt, keeps one
//! session per guest on its channel socket, and carries their sealed frames over one mutual-TLS
//! uplink to the controller.

#![deny(unsafe_code)]

mod backoff;
pub mod check;
pub mod config;
pub mod discovery;
mod guest;
mod guests;
pub mod hook;
pub mod libvirt;
pub mod metrics;
mod notify;
pub mod ovs;
pub mod relay;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod uplink;

pub use config::Config;
pub use discovery::{GuestChange, GuestChannel};
pub use metrics::Metrics;
pub use relay::Relay;
pub use tokio_util::sync::CancellationToken;

/// Everything that stops the relay from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("configuration")]
    Config(#[from] config::ConfigError),
    #[error("TLS material")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen for metrics on {addr}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("libvirt discovery")]
    Libvirt(#[from] libvirt::Error),
    #[error("libvirt hook listener")]
    Hook(#[from] hook::HookError),
    #[error("guest discovery ended unexpectedly")]
    DiscoveryEnded,
}

/// An error and its sources on one line, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The libvirt side of `config`.
pub fn libvirt_config(config: &Config) -> libvirt::LibvirtConfig {
    libvirt::LibvirtConfig {
        uri: config.libvirt_uri.clone(),
        channel: config.channel.clone(),
        reconcile_interval: config.reconcile_interval,
        ..libvirt::LibvirtConfig::default()
    }
}

/// The daemon: libvirt discovery feeding a [`Relay`], nudged by the libvirt hook's
/// notifications if `hook_socket` is set, until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let relay = Relay::new(config.clone())?;
    let hook_socket = match &config.hook_socket {
        Some(path) => Some(hook::HookSocket::bind(path)?),
        None => None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    // Discovery and the hook listener stop with the relay, whichever ends first.
    let discovery_stop = shutdown.child_token();
    let discovery = libvirt::Discovery::new(libvirt_config(&config));
    let hints = discovery.hints();
    let thread = discovery.spawn(tx, discovery_stop.clone())?;
    let hook_listener = hook_socket.map(|socket| {
        tokio::spawn(hook::serve(
            socket,
            hints,
            relay.metrics().clone(),
            discovery_stop.clone(),
        ))
    });
    let result = relay.run(rx, shutdown).await;
    discovery_stop.cancel();
    if let Some(listener) = hook_listener {
        let _ = listener.await;
    }
    // The thread notices the token at once; join it off the runtime.
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    result
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
pub fn cancel_on_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = shutdown.cancelled() => return,
        }
        shutdown.cancel();
    });
    Ok(())
}
