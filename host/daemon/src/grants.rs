//! Support access: a tenant admin lets operator staff read its job metadata
//! and plugin output logs (never dataset contents) for a limited time. Every
//! use is written to the tenant's audit log.

// The record is the API's, served as is.
pub use kanon_client::SupportGrant;

/// Longest grant a tenant may give: support access is meant to be short.
pub const MAX_GRANT_SECS: u64 = 30 * 24 * 3600;
