//! fibd: a durable cursor over the Fibonacci numbers that fit in 128 bits, served over HTTP.
//! See ARCHITECTURE.md for the request flow and the invariants; `main.rs` wires these modules.

pub mod config;
pub mod connections;
pub mod cursor;
pub mod error;
pub mod fib;
#[doc(hidden)]
pub mod fuzz_check;
pub mod hang_up;
pub mod http_edge;
pub mod http_response;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod nudger;
pub mod probe;
pub mod process;
pub mod queue_lag;
pub mod routes;
#[cfg(test)]
mod sim_disk;
pub mod slot;
pub mod state_file;
pub mod state_owner;
pub mod watchdog;
