//! # memds-client
//!
//! The client side of the MemDS protocol: mutual-TLS material, QUIC connections, and pipelined
//! framed requests over one long-lived stream per connection. `memds-ctl`, the router cache and
//! the load generator all talk to servers through it.
//!
//! # Layout
//!
//! - [`tls`]: loading certificates and keys (PEM), the file names of a development TLS
//!   directory, and building the QUIC client configuration (rustls with ring, TLS 1.3, ALPN
//!   `memds/1`).
//! - [`client`]: [`Connector`] (one QUIC endpoint, many connections) and [`Client`] (one
//!   connection: requests are pipelined with ids, writes coalesced, answers matched by id;
//!   nothing the server sends is sized or trusted beyond [`ConnectOptions`]' bounds).
//!   Failures are [`ClientError`]s that keep their cause as their `source`: a
//!   [`ConnectError`] (quinn's connect or connection error, or a timeout) and a
//!   [`CloseReason`] (what was under way when the connection closed, and quinn's error).

pub mod client;
pub mod tls;

pub use client::{
    Client, ClientError, CloseReason, ConnectError, ConnectOptions, Connector, DeltaAnswer,
    PendingReply, TransportStats,
};
pub use tls::{ClientTls, Role, TlsError};
