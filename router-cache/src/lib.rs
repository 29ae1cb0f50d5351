//! # router-cache
//!
//! The constant-work route cache that request routers link: every lookup, hit or miss, is also
//! sent asynchronously to the MemDS fleet, so the fleet's load does not depend on the hit rate.
//!
//! # Layout
//!
//! This crate is a placeholder in the workspace until the router-cache issue lands; today it
//! only re-exports the route type it will serve.

pub use memds_proto::{Route, key_hash};
