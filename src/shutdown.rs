//! The node's one stop signal, like mini-redis's `Shutdown`: `serve` fires it on SIGINT or
//! SIGTERM, and the DICOM listener, the pipeline, the outbox and the HTTP server each hold a
//! clone, stop taking new work when it fires and finish what they have in hand.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Shutdown {
    sender: Arc<watch::Sender<bool>>,
    receiver: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        let (sender, receiver) = watch::channel(false);
        Shutdown { sender: Arc::new(sender), receiver }
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Tells every holder to stop; firing again does nothing.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once the signal has fired (at once if it already has).
    pub async fn triggered(&self) {
        let mut receiver = self.receiver.clone();
        // cannot fail: this handle keeps the sender alive
        let _ = receiver.wait_for(|stopped| *stopped).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_signal_even_after_it_fired() {
        let shutdown = Shutdown::new();
        let holder = shutdown.clone();
        let waiting = tokio::spawn(async move { holder.triggered().await });
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        waiting.await.unwrap();
        let late = shutdown.clone();
        assert!(late.is_triggered());
        tokio::time::timeout(std::time::Duration::from_secs(1), late.triggered()).await.expect("resolves at once");
    }
}
