//! The three kinds of step and how each attempt's side effect is started, observed and
//! stopped.

pub mod agent;
pub mod container;
pub mod http;
pub mod inflight;
