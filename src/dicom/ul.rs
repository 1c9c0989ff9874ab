//! PDU framing over one TCP connection (PS3.8 9.3).
//!
//! P-DATA-TF PDUs are split into their PDVs here without copying each fragment; every other PDU
//! is parsed by dicom-ul. Writing goes through dicom-ul's PDU writer.

use std::io;
use std::ops::Range;

use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// P-DATA-TF.
const PDATA_TF: u8 = 0x04;
/// Other PDUs (association requests with many contexts) are small; refuse absurd lengths.
const MAX_CONTROL_PDU: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UlError {
    #[error("connection closed by the peer")]
    Closed,
    #[error("network error: {0}")]
    Io(#[from] io::Error),
    #[error("PDU of {length} bytes exceeds the limit of {limit}")]
    TooLarge { length: u32, limit: u32 },
    #[error("malformed PDU: {0}")]
    Malformed(String),
    #[error("malformed PDU: {0}")]
    Pdu(#[source] dicom_ul::pdu::ReadError),
    #[error("cannot encode a PDU: {0}")]
    Encode(#[source] dicom_ul::pdu::WriteError),
}

/// One presentation data value of a P-DATA-TF PDU.
#[derive(Debug, Clone)]
pub struct Pdv {
    pub context_id: u8,
    pub is_command: bool,
    pub is_last: bool,
    /// The fragment's bytes within [`PData::body`].
    pub range: Range<usize>,
}

/// A received P-DATA-TF PDU.
#[derive(Debug)]
pub struct PData {
    pub body: Vec<u8>,
    pub pdvs: Vec<Pdv>,
}

impl PData {
    pub fn fragment(&self, pdv: &Pdv) -> &[u8] {
        &self.body[pdv.range.clone()]
    }
}

#[derive(Debug)]
pub enum Incoming {
    PData(PData),
    Other(Pdu),
}

/// A byte stream under the upper layer: plain TCP, or TLS over it.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

/// A connection speaking the DICOM upper layer.
pub struct Connection {
    stream: BufReader<Box<dyn ByteStream>>,
    /// The largest P-DATA PDU we announced; larger ones abort the association.
    max_pdu: u32,
    write_buf: Vec<u8>,
}

impl Connection {
    pub fn new(stream: Box<dyn ByteStream>, max_pdu: u32) -> Connection {
        Connection { stream: BufReader::with_capacity(64 * 1024, stream), max_pdu, write_buf: Vec::with_capacity(1024) }
    }

    /// Reads the next PDU.
    pub async fn read(&mut self) -> Result<Incoming, UlError> {
        let mut header = [0u8; 6];
        match self.stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(UlError::Closed),
            Err(e) => return Err(e.into()),
        }
        let pdu_type = header[0];
        let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        // a little slack over the announced maximum, as many SCUs count the PDV headers differently
        let limit = if pdu_type == PDATA_TF { self.max_pdu.saturating_add(64) } else { MAX_CONTROL_PDU };
        if length > limit {
            return Err(UlError::TooLarge { length, limit });
        }
        let mut body = vec![0u8; length as usize];
        self.stream.read_exact(&mut body).await.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => UlError::Malformed("connection closed inside a PDU".into()),
            _ => UlError::Io(e),
        })?;
        if pdu_type == PDATA_TF {
            let pdvs = split_pdvs(&body)?;
            return Ok(Incoming::PData(PData { body, pdvs }));
        }
        let mut whole = Vec::with_capacity(6 + body.len());
        whole.extend_from_slice(&header);
        whole.extend_from_slice(&body);
        match dicom_ul::read_pdu(&whole[..], MAX_CONTROL_PDU, false) {
            Ok(Some(pdu)) => Ok(Incoming::Other(pdu)),
            Ok(None) => Err(UlError::Malformed("incomplete PDU".into())),
            Err(e) => Err(UlError::Pdu(e)),
        }
    }

    /// Sends one PDU.
    pub async fn send(&mut self, pdu: &Pdu) -> Result<(), UlError> {
        self.write_buf.clear();
        dicom_ul::write_pdu(&mut self.write_buf, pdu).map_err(UlError::Encode)?;
        let stream = self.stream.get_mut();
        stream.write_all(&self.write_buf).await?;
        // a TLS stream buffers its records until flushed
        stream.flush().await?;
        Ok(())
    }

    /// Sends a command set in a single PDV.
    pub async fn send_command(&mut self, context_id: u8, command: Vec<u8>) -> Result<(), UlError> {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        };
        self.send(&pdu).await
    }

    /// Closes the write side, so that the peer sees the end of the connection.
    pub async fn shutdown(&mut self) {
        let _ = self.stream.get_mut().shutdown().await;
    }
}

/// Splits a P-DATA-TF body into its PDV items (PS3.8 9.3.5.1).
fn split_pdvs(body: &[u8]) -> Result<Vec<Pdv>, UlError> {
    let mut pdvs = Vec::with_capacity(2);
    let mut at = 0usize;
    while at < body.len() {
        if body.len() - at < 6 {
            return Err(UlError::Malformed("truncated PDV item header".into()));
        }
        let item_length = u32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]) as usize;
        if item_length < 2 || body.len() - at - 4 < item_length {
            return Err(UlError::Malformed(format!("PDV item length {item_length} does not fit the PDU")));
        }
        let context_id = body[at + 4];
        let control = body[at + 5];
        pdvs.push(Pdv {
            context_id,
            is_command: control & 0x01 != 0,
            is_last: control & 0x02 != 0,
            range: at + 6..at + 4 + item_length,
        });
        at += 4 + item_length;
    }
    if pdvs.is_empty() {
        return Err(UlError::Malformed("P-DATA-TF without PDV items".into()));
    }
    Ok(pdvs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdvs_are_split_with_their_flags() {
        let mut body = Vec::new();
        body.extend_from_slice(&5u32.to_be_bytes());
        body.extend_from_slice(&[1, 0x03, 9, 9, 9]);
        body.extend_from_slice(&3u32.to_be_bytes());
        body.extend_from_slice(&[3, 0x00, 7]);
        let pdvs = split_pdvs(&body).unwrap();
        assert_eq!(pdvs.len(), 2);
        assert!(pdvs[0].is_command && pdvs[0].is_last);
        assert_eq!(&body[pdvs[0].range.clone()], &[9, 9, 9]);
        assert!(!pdvs[1].is_command && !pdvs[1].is_last);
        assert_eq!(pdvs[1].context_id, 3);
    }

    #[test]
    fn lying_lengths_are_malformed() {
        let mut body = Vec::new();
        body.extend_from_slice(&500u32.to_be_bytes());
        body.extend_from_slice(&[1, 0x03, 9]);
        assert!(matches!(split_pdvs(&body), Err(UlError::Malformed(_))));
    }
}
