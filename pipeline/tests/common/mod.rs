//! Helpers for end-to-end tests against the local stack, by concern: where the stack is and
//! unique names (`env`), child processes (`process`), a test's own topics, bridge and
//! simulator (`scope`), reading and producing records (`kafka`), HTTP (`http`), a proxy
//! before Mosquitto that counts PUBACKs (`mqtt_tap`), a test CA and TLS terminator (`tls`),
//! a registry that fails on purpose (`registry`), and the one fix builder (`fixes`).
//! Every test file starts with `mod common; use common::*;`.
#![allow(dead_code)]

mod env;
mod fixes;
mod http;
mod kafka;
mod mqtt_tap;
mod process;
mod registry;
mod scope;
mod tls;

// Each test binary uses a part of them.
#[allow(unused_imports)]
pub use env::*;
#[allow(unused_imports)]
pub use fixes::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use kafka::*;
#[allow(unused_imports)]
pub use mqtt_tap::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use registry::*;
#[allow(unused_imports)]
pub use scope::*;
#[allow(unused_imports)]
pub use tls::*;
