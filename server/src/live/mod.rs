//! Live streams: the gap-free event feed and the caps on open streams.
//!
//! Every SSE endpoint (the contract's and the replaced system's) is a view over one
//! [`Feed`]: committed events in log order, first replayed from the database after a
//! cursor, then live from the store's in-memory fan-out. A client that falls behind the
//! fan-out is caught up from the database, never dropped or given a gap.

mod feed;
mod limits;

pub use feed::Feed;
pub use limits::{StreamGuard, StreamLimits, StreamRefusal};
