//! Turns SIGINT and SIGTERM into a cancellation that every task watches.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGINT or SIGTERM. The handlers are
/// installed before this returns (not when the future is first polled), so
/// a signal sent as soon as the server says it listens is caught.
pub fn on_signal(
    token: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
            _ = token.cancelled() => return,
        };
        tracing::info!("{name} received, shutting down");
        token.cancel();
    })
}

/// Resolves at the next SIGINT or SIGTERM (during the shutdown delay, a
/// second signal means "now"); never if the signals cannot be watched.
pub async fn second_signal() {
    let (Ok(mut interrupt), Ok(mut terminate)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
