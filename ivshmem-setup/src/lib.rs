//! Region setup.
#![forbid(unsafe_code)]
