//! pneumotriage: a DICOM node that receives chest radiographs, keeps them durably, and (in later
//! stages) triages them for pneumothorax. See README.md and ../shared/design.md for the map.

pub mod config;
pub mod dicom;
pub mod evaluate;
pub mod imaging;
pub mod inference;
pub mod ingest;
pub mod pipeline;
pub mod results;
pub mod spool;
pub mod store;
