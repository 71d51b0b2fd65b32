use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM; a second one ends the process at once
/// (exit code 130), for when a graceful stop waits on something that does not answer.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops this process");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term => tracing::info!("SIGTERM: shutting down"),
        }
        t.cancel();
        let again = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = again => {}
        }
        eprintln!("locus: second signal: stopping now");
        std::process::exit(130);
    });
    token
}
