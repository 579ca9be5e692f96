//! `--in-flight K`: at most K device links between the start of their connect and the
//! broker's first bytes (its CONNACK) at once.
//!
//! Why: a broker accepts connections from a queue of fixed length (Mosquitto listens
//! with a backlog of 100); a SYN that finds it full is dropped and sent again by the
//! kernel only after 1 s, while the firmware gives its TCP connect 200 ms
//! (`MqttWifiTimeout`, `MqttReconnect` in xdrv_02_9_mqtt.ino) and then waits 10 s to try
//! again. Thousands of devices whose WiFi comes up in the same instant would mostly
//! fail their first attempt. A link waits for its turn before its connect starts, so the
//! firmware's timeout counts from then; the wait shows in the connect latency
//! (`Attempting connection...` to `Connected`), never as a failure.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tasmota_core::ConnectRequest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::host::{Network, Opening};
use crate::link::BoxStream;

/// A [`Network`] whose link opens wait for one of K turns.
pub struct Gate {
    inner: Arc<dyn Network>,
    turns: Arc<Semaphore>,
}

impl Gate {
    /// At most `k` links opening at once (`k` ≥ 1).
    pub fn new(inner: Arc<dyn Network>, k: usize) -> Gate {
        Gate { inner, turns: Arc::new(Semaphore::new(k.clamp(1, Semaphore::MAX_PERMITS))) }
    }
}

impl Network for Gate {
    fn open(&self, req: ConnectRequest, peer: String, tls_time: Duration) -> Opening {
        let (inner, turns) = (self.inner.clone(), self.turns.clone());
        Box::pin(async move {
            // The semaphore is never closed.
            let turn = turns.acquire_owned().await.ok();
            let stream = inner.open(req, peer, tls_time).await?;
            Ok(Box::pin(Admitted { stream, turn }) as BoxStream)
        })
    }
}

/// An open link holding its turn until the first bytes (or the end) arrive.
struct Admitted {
    stream: BoxStream,
    turn: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let polled = self.stream.as_mut().poll_read(cx, buf);
        if polled.is_ready() {
            self.turn = None;
        }
        polled
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.stream.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream.as_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tasmota_core::LinkFailure;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::mpsc;

    /// Opens in-memory links and hands their far ends to the test.
    struct Pipes(mpsc::UnboundedSender<DuplexStream>);

    impl Network for Pipes {
        fn open(&self, req: ConnectRequest, _peer: String, _tls_time: Duration) -> Opening {
            let far = self.0.clone();
            Box::pin(async move {
                if req.port == 0 {
                    return Err(LinkFailure::Tcp);
                }
                let (near, other) = tokio::io::duplex(64);
                let _ = far.send(other);
                Ok(Box::pin(near) as BoxStream)
            })
        }
    }

    fn req(port: u16) -> ConnectRequest {
        ConnectRequest { host: "h".into(), port, tls: None, timeout_ms: 200 }
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_waits_until_an_earlier_one_hears_from_the_broker() {
        let (tx, mut far) = mpsc::unbounded_channel();
        let gate = Gate::new(Arc::new(Pipes(tx)), 2);
        // A failed open gives its turn back at once (or the third open below would
        // wait for ever).
        assert_eq!(gate.open(req(0), String::new(), Duration::ZERO).await.err(), Some(LinkFailure::Tcp));
        let mut a = gate.open(req(1), String::new(), Duration::ZERO).await.unwrap();
        let _b = gate.open(req(1), String::new(), Duration::ZERO).await.unwrap();
        let third = tokio::spawn(gate.open(req(1), String::new(), Duration::ZERO));
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "two links hold both turns");
        // The broker answers the first link (its CONNACK): the third may open.
        let mut a_far = far.recv().await.unwrap();
        a_far.write_all(&[0x20, 2, 0, 0]).await.unwrap();
        let mut connack = [0u8; 4];
        a.read_exact(&mut connack).await.unwrap();
        let third = tokio::time::timeout(Duration::from_secs(1), third).await;
        assert!(third.expect("the third link got a turn").unwrap().is_ok());
    }
}
