//! The guest library.
#![forbid(unsafe_code)]
