//! The shutdown signal: SIGTERM or SIGINT.

use std::future::Future;

/// Installs the handlers now and returns what ends at the first SIGTERM or
/// SIGINT. Installed before the node says it is ready: a signal sent as
/// soon as it is (before the accept loop first polls the future) is kept
/// for the future, rather than ending the process by the default action,
/// which would drop every connection without its close.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::time::Duration;

    /// Without the handler installed, the signal's default action ends
    /// this test process.
    #[tokio::test]
    async fn a_signal_sent_before_the_first_poll_is_kept_for_it() {
        let shutdown = super::signal();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), shutdown)
            .await
            .expect("the signal ends the future");
    }
}
