//! The host mediator daemon.
#![forbid(unsafe_code)]
