//! Network helpers that the configuration and the listeners share.

pub mod cidr;
