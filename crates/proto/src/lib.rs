//! Generated gRPC clients and servers for every Signalbox service.
//!
//! The `.proto` files in `proto/` are the interface definition language of the
//! synchronous paths; packages are versioned (`signalbox.<service>.v1`) so a
//! breaking change becomes a new package served side by side.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("signalbox.auth.v1");
    }
}

pub mod catalog {
    pub mod v1 {
        tonic::include_proto!("signalbox.catalog.v1");
    }
}

pub mod orders {
    pub mod v1 {
        tonic::include_proto!("signalbox.orders.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Signalbox proto, for gRPC server
/// reflection (`grpcurl -plaintext localhost:50052 list`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/signalbox_descriptor.bin"));
