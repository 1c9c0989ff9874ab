//! The network side: the upper layer (`ul`), DIMSE command sets (`dimse`), what we accept
//! (`conformance`), the storage SCP (`scp`) and the SCU that sends results (`scu`).

pub mod conformance;
pub mod dimse;
pub mod scp;
pub mod scu;
pub mod ul;
