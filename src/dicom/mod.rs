//! DICOM on the wire: the upper layer (`ul`), DIMSE command sets (`dimse`), what the node
//! accepts (`conformance`), the storage SCP (`scp`), the bounded walk that every received data
//! set passes before anything parses it (`scan`), the SCU that sends results (`scu`), the
//! query/retrieve SCU that pulls from the PACS (`qr`), and whole PS3.10 objects received over
//! HTTP (`part10`). TLS is the crate's own (`crate::tls`): MLLP and HTTPS share it.

pub mod conformance;
pub mod dimse;
pub mod part10;
pub mod qr;
pub mod scan;
pub mod scp;
pub mod scu;
pub mod ul;
