//! The wire format, and nothing else: channel names, stream ids, connection
//! cursors, publish envelopes and the one-time encoding of an event into SSE
//! bytes. Pure functions over bytes; no I/O, no clocks, no shared state.

mod channel;
mod cursor;
mod encode;
mod envelope;
#[cfg(test)]
mod fuzz;
mod id;
pub mod mercure;

pub use channel::{Channel, ChannelError, MAX_CHANNEL_LEN};
pub use cursor::{Cursor, CursorError};
pub use encode::{Encoded, encode_comment, encode_control, encode_control_text, encode_retry_hint};
pub use envelope::{EnvelopeError, Event, parse_payload, parse_payload_lenient};
pub use id::EventId;
