//! Wake-ups: a listener connection subscribed to the schema's notification channel. An add
//! that makes a key ready, and a completion that queues one again, call `pg_notify` in their
//! own statement, so the notification is sent when (and only if) they commit; the listener
//! wakes this process's claimer when the payload names its queue.
//!
//! Why polling as well: a notification sent while the listener was reconnecting is lost, and a
//! lease that expires or a delay that ends sends none. So the claimer also wakes at the next
//! ready time it knows of and at the poll interval (see `claim`), and once after every
//! reconnect.

use super::conn::error_chain;
use super::queue::Inner;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Listens until the queue stops, reconnecting with backoff.
pub(super) async fn run_listener(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut backoff = inner.config.reconnect_base;
    loop {
        let (tx, mut notices) = mpsc::unbounded_channel();
        let Some(conn) = inner
            .db
            .connect_retrying("listener", Some(tx), &mut stop)
            .await
        else {
            return;
        };
        let listen = format!("LISTEN {}", inner.config.schema);
        if let Err(error) = conn.client.batch_execute(&listen).await {
            tracing::warn!(queue = %inner.config.queue, error = %error_chain(&error), "LISTEN failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(inner.config.reconnect_max);
            continue;
        }
        backoff = inner.config.reconnect_base;
        // Whatever was notified while we were away: look once.
        inner.wake.notify_one();
        inner.counters.listening.store(true, Ordering::Relaxed);
        loop {
            tokio::select! {
                n = notices.recv() => match n {
                    Some(n) if n.payload() == inner.config.queue => {
                        inner.counters.notifications.fetch_add(1, Ordering::Relaxed);
                        inner.wake.notify_one();
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = stop.changed() => return,
            }
        }
        inner.counters.listening.store(false, Ordering::Relaxed);
        tracing::warn!(queue = %inner.config.queue, "notification connection lost; reconnecting");
        drop(conn);
    }
}
