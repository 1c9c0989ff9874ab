//! The main header of a compressed frame, read before any decoder sees it: a decoder sizes its
//! buffers from the codestream's own header, not from Rows and Columns, so a codestream that
//! claims 60000 x 60000 inside a data set that says 1955 x 1841 would make it allocate gigabytes.
//!
//! JPEG (baseline, extended, lossless) and JPEG-LS: the SOFn segment (ITU T.81 B.2.2, T.87 C.2.2);
//! JPEG 2000: the SIZ segment (ITU T.800 A.5.1), in a raw codestream or inside a JP2 file's
//! `jp2c` box. RLE has no such header (its decoder sizes from Rows and Columns), but its
//! segment table and run lengths are checked against them ([`check_rle_frame`]): dicom-rs's RLE
//! decoder allocates the segment count the header claims and indexes past a short segment.

/// What a codestream says of its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub width: u32,
    pub height: u32,
    pub components: u32,
    /// Bits per sample (of the first component).
    pub precision: u32,
}

/// The frame header of the first fragment for `transfer_syntax`; `Ok(None)` for a transfer
/// syntax without one (RLE). An error when the header is missing or cut off within `head`.
pub fn frame_header(transfer_syntax: &str, head: &[u8]) -> Result<Option<FrameHeader>, String> {
    match transfer_syntax.trim_end_matches(['\0', ' ']) {
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70"
        | "1.2.840.10008.1.2.4.80"
        | "1.2.840.10008.1.2.4.81" => jpeg(head).map(Some),
        "1.2.840.10008.1.2.4.90"
        | "1.2.840.10008.1.2.4.91"
        | "1.2.840.10008.1.2.4.201"
        | "1.2.840.10008.1.2.4.202"
        | "1.2.840.10008.1.2.4.203" => jpeg2000(head).map(Some),
        _ => Ok(None),
    }
}

fn be16(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 2).map(|v| u16::from_be_bytes([v[0], v[1]]) as u32).ok_or_else(|| "cut off".to_string())
}

fn be32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4).map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]])).ok_or_else(|| "cut off".to_string())
}

/// JPEG and JPEG-LS: markers from SOI to the first SOFn (or SOF55 for JPEG-LS).
fn jpeg(b: &[u8]) -> Result<FrameHeader, String> {
    if b.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err("no JPEG start-of-image marker".into());
    }
    let mut at = 2;
    loop {
        // fill bytes (0xFF) may precede a marker
        while b.get(at) == Some(&0xFF) && b.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        if b.get(at) != Some(&0xFF) {
            return Err(format!("no marker at byte {at}"));
        }
        let marker = *b.get(at + 1).ok_or("cut off")?;
        match marker {
            // SOF0-3, 5-7, 9-11, 13-15, and JPEG-LS SOF55
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xF7 => {
                let precision = *b.get(at + 4).ok_or("cut off")? as u32;
                let height = be16(b, at + 5)?;
                let width = be16(b, at + 7)?;
                let components = *b.get(at + 9).ok_or("cut off")? as u32;
                return Ok(FrameHeader { width, height, components, precision });
            }
            0xDA | 0xD9 => return Err("no frame header before the scan".into()),
            // standalone markers without a length
            0x01 | 0xD0..=0xD7 => at += 2,
            _ => {
                let length = be16(b, at + 2)? as usize;
                if length < 2 {
                    return Err(format!("segment length {length}"));
                }
                at += 2 + length;
            }
        }
    }
}

/// JPEG 2000: SOC then SIZ; a JP2 file is unwrapped to its `jp2c` box first.
fn jpeg2000(b: &[u8]) -> Result<FrameHeader, String> {
    let codestream = if b.get(4..8) == Some(b"jP  ") { jp2_codestream(b)? } else { b };
    if codestream.get(..4) != Some(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return Err("no JPEG 2000 SOC and SIZ markers".into());
    }
    // SIZ after its marker: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz
    let siz = 4;
    let (x, y) = (be32(codestream, siz + 4)?, be32(codestream, siz + 8)?);
    let (x0, y0) = (be32(codestream, siz + 12)?, be32(codestream, siz + 16)?);
    let components = be16(codestream, siz + 36)?;
    let precision = (*codestream.get(siz + 38).ok_or("cut off")? as u32 & 0x7F) + 1;
    if x0 > x || y0 > y {
        return Err("image offset beyond the image".into());
    }
    Ok(FrameHeader { width: x - x0, height: y - y0, components, precision })
}

/// The contents of a JP2 file's contiguous codestream box.
fn jp2_codestream(b: &[u8]) -> Result<&[u8], String> {
    let mut at = 0usize;
    while at + 8 <= b.len() {
        let length = be32(b, at)? as usize;
        let kind = &b[at + 4..at + 8];
        let (header, length) = match length {
            1 => (16, be32(b, at + 12)? as usize), // a 64-bit length; its high half must be 0 here
            0 => (8, b.len() - at),                // to the end
            n => (8, n),
        };
        if kind == b"jp2c" {
            return b.get(at + header..).ok_or_else(|| "cut off".to_string());
        }
        if length < header {
            return Err(format!("JP2 box length {length}"));
        }
        at += length;
    }
    Err("no jp2c box".into())
}

/// Whether an RLE Lossless frame (PS3.5 G.3) can be decoded as the data set says: at most 15
/// segments, as many as `segments` (samples x bytes per sample), each within the fragment and
/// decoding (PackBits) to at least `pixels` bytes.
pub fn check_rle_frame(fragment: &[u8], segments: usize, pixels: usize) -> Result<(), String> {
    let le32 = |at: usize| -> Result<usize, String> {
        fragment
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| "RLE header cut off".to_string())
    };
    let count = le32(0)?;
    if count > 15 || fragment.len() < 64 {
        return Err(format!("RLE header declares {count} segments in {} bytes", fragment.len()));
    }
    if count < segments {
        return Err(format!("RLE frame has {count} segments, {segments} needed"));
    }
    let mut offsets = (0..count).map(|k| le32(4 + 4 * k)).collect::<Result<Vec<_>, _>>()?;
    offsets.push(fragment.len());
    for k in 0..segments {
        let segment = fragment.get(offsets[k]..offsets[k + 1]).ok_or("RLE segment offsets out of order")?;
        let decoded = packbits_length(segment, pixels);
        if decoded < pixels {
            return Err(format!("RLE segment {k} decodes to {decoded} bytes, {pixels} needed"));
        }
    }
    Ok(())
}

/// How many bytes a PackBits segment decodes to (counting stops at `enough`).
fn packbits_length(segment: &[u8], enough: usize) -> usize {
    let (mut at, mut out) = (0usize, 0usize);
    while at < segment.len() && out < enough {
        let n = segment[at] as i8;
        at += 1;
        match n {
            0..=127 => {
                let literal = (n as usize + 1).min(segment.len() - at);
                out += literal;
                at += literal;
            }
            -128 => {}
            _ if at < segment.len() => {
                out += (1 - n as isize) as usize;
                at += 1;
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_frame_header_after_other_segments() {
        let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0, 0];
        b.extend_from_slice(&[0xFF, 0xC3, 0x00, 0x0B, 16, 0x07, 0x31, 0x07, 0xA3, 1, 1, 0x11, 0]);
        let h = frame_header("1.2.840.10008.1.2.4.70", &b).unwrap().unwrap();
        assert_eq!(h, FrameHeader { width: 1955, height: 1841, components: 1, precision: 16 });
    }

    #[test]
    fn rle_frames_must_cover_their_pixels() {
        let mut frame = vec![0u8; 64];
        frame[0] = 1;
        frame[4] = 64;
        frame.extend_from_slice(&[0xFD, 7, 2, 1, 2, 3]); // a run of 4, then 3 literals
        assert_eq!(check_rle_frame(&frame, 1, 7), Ok(()));
        assert!(check_rle_frame(&frame, 1, 8).unwrap_err().contains("decodes to 7 bytes"));
        assert!(check_rle_frame(&frame, 2, 7).unwrap_err().contains("2 needed"));
        frame[0] = 0xFF;
        assert!(check_rle_frame(&frame, 1, 7).is_err());
    }

    #[test]
    fn jpeg2000_siz_with_offsets() {
        let mut b = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0];
        for v in [60_010u32, 60_000, 10, 0, 60_000, 60_000, 0, 0] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&[15, 1, 1]); // Ssiz (16 bits, unsigned), XRsiz, YRsiz
        let h = frame_header("1.2.840.10008.1.2.4.90", &b).unwrap().unwrap();
        assert_eq!(h, FrameHeader { width: 60_000, height: 60_000, components: 1, precision: 16 });
        assert!(frame_header("1.2.840.10008.1.2.4.90", &b[..20]).is_err());
        assert_eq!(frame_header("1.2.840.10008.1.2.5", &b).unwrap(), None);
    }
}
