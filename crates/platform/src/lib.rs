//! Service defaults: everything a Signalbox service needs besides its business
//! logic, behind one call each. Configuration, telemetry (logs, traces,
//! metrics), health endpoints,
//! shutdown, the error vocabulary shared by HTTP and gRPC, the one reader of
//! the `Authorization` header, and access-token verification (used by the
//! gateway, the realtime service and orders alike).

pub mod authorization;
pub mod caller;
pub mod config;
pub mod error;
pub mod faults;
pub mod health;
pub mod instrument;
pub mod metrics;
pub mod runtime;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod tokens;

pub use error::{ErrorCode, Problem};
