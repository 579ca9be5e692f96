//! The shutdown signals a foreground command stops on: Ctrl-C (SIGINT) and, on Unix,
//! SIGTERM (what `kill`, systemd, Docker and Kubernetes send).
//!
//! A loop that waits for other things too creates a [`Shutdown`] once, before the loop, and
//! polls [`Shutdown::recv`] in its `select!`: a signal that arrives while the loop is busy
//! is kept until the next poll. A command that only waits calls [`shutdown`].

/// Registered SIGINT/SIGTERM handlers. Create inside a tokio runtime.
pub struct Shutdown {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Registers the handlers; from now on these signals no longer end the process but wake
    /// [`Shutdown::recv`]. Fails only if the OS refuses the registration.
    pub fn new() -> std::io::Result<Shutdown> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Shutdown { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
        }
        #[cfg(not(unix))]
        Ok(Shutdown {})
    }

    /// Waits for the next SIGINT or SIGTERM (one that came since the last call counts).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Waits for SIGINT or SIGTERM. If the handlers cannot be registered, says so on stderr and
/// waits for Ctrl-C alone.
pub async fn shutdown() {
    match Shutdown::new() {
        Ok(mut s) => s.recv().await,
        Err(e) => {
            eprintln!("tasmota-sim: cannot watch SIGTERM ({e}); stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
