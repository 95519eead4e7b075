//! The WebSocket endpoint (`/v1/ws`) end to end, against real nodes.

mod raw;
mod served;
mod slots;
