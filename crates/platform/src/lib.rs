//! Service defaults: everything a Signalbox service needs besides its business
//! logic, behind one call each. Configuration, telemetry, health endpoints,
//! shutdown, the error vocabulary shared by HTTP and gRPC, and access-token
//! verification (used by the gateway and the realtime service alike).

pub mod config;
pub mod error;
pub mod health;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod tokens;

pub use error::{ErrorCode, Problem};
