//! HTTP: the vocabulary every handler speaks ([`response`]: errors as
//! statuses in one place, bounded bodies; [`query`]; [`deadlines`], the
//! head and keep-alive timeouts of a connection), and the handlers of the
//! routes that are plain HTTP: the publish [`api`], [`health`] and metrics,
//! the embedded [`screens`], the HTTP-to-HTTPS [`redirect`], and revoking
//! [`tokens`].
//!
//! `response`, `query` and `deadlines` are leaves that the transports'
//! upgrade endpoints use too. The handlers import the core, publish,
//! replication's status and `net`; never a transport or the gateway, which
//! owns the route table.

pub mod api;
pub mod cors;
pub mod deadlines;
pub mod health;
pub mod query;
pub mod redirect;
pub mod response;
pub mod screens;
pub mod tokens;
