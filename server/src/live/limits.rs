//! Caps on open streams: in total, and per client address.
//!
//! A stream holds a [`StreamGuard`]; dropping it (the client went away, the response was
//! dropped) gives the slot back at once.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRefusal {
    /// This client has too many streams open (429).
    PerClient(usize),
    /// The server has too many streams open (503).
    Total(usize),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// The shared counters.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    max_total: usize,
    max_per_client: usize,
    counts: Arc<Mutex<Counts>>,
}

impl StreamLimits {
    /// Caps of `max_total` streams, `max_per_client` per client address.
    pub fn new(max_total: usize, max_per_client: usize) -> Self {
        Self {
            max_total,
            max_per_client,
            counts: Arc::default(),
        }
    }

    /// Takes a slot for `client`, or says why not.
    pub fn acquire(&self, client: IpAddr) -> Result<StreamGuard, StreamRefusal> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.max_total {
            return Err(StreamRefusal::Total(self.max_total));
        }
        let mine = c.per_client.entry(client).or_default();
        if *mine >= self.max_per_client {
            return Err(StreamRefusal::PerClient(self.max_per_client));
        }
        *mine += 1;
        c.total += 1;
        crate::metrics::sse_clients(c.total);
        Ok(StreamGuard {
            limits: self.clone(),
            client,
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.counts.lock().map(|c| c.total).unwrap_or(0)
    }
}

/// One open stream's slot, released on drop.
#[derive(Debug)]
pub struct StreamGuard {
    limits: StreamLimits,
    client: IpAddr,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        crate::metrics::sse_clients(c.total);
        if let Some(n) = c.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                c.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_client_and_in_total_and_come_back_on_drop() {
        let limits = StreamLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = limits.acquire(a).unwrap();
        let _g2 = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).unwrap_err(), StreamRefusal::PerClient(2));
        let _g3 = limits.acquire(b).unwrap();
        assert_eq!(limits.acquire(b).unwrap_err(), StreamRefusal::Total(3));
        drop(g1);
        assert_eq!(limits.open(), 2);
        assert!(limits.acquire(a).is_ok());
    }
}
