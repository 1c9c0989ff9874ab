//! The network side: the upper layer (`ul`), DIMSE command sets (`dimse`), what we accept
//! (`conformance`) and the storage SCP (`scp`).

pub mod conformance;
pub mod dimse;
pub mod scp;
pub mod ul;
