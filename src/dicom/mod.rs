//! The network side: the upper layer (`ul`), DIMSE command sets (`dimse`), what we accept
//! (`conformance`), the storage SCP (`scp`), the SCU that sends results (`scu`) and DICOM TLS
//! (`tls`).

pub mod conformance;
pub mod dimse;
pub mod scp;
pub mod scu;
pub mod tls;
pub mod ul;
