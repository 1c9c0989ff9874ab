//! A bounded, iterative walk over the element structure of a received data set, before anything
//! else parses it.
//!
//! dicom-rs reads a data set recursively (one stack frame per nested sequence) and allocates an
//! element's declared length before it knows the bytes exist. Both are fine for trusted files and
//! fatal for hostile ones: a few thousand nested sequences overflow the stack, a 100-byte data set
//! that declares a 4 GB element allocates 4 GB. So every data set that came from the network is
//! walked here first, with an explicit stack and no allocation on a peer's say-so: nesting depth,
//! element count and fragment count are capped, and every declared length must fit in the bytes
//! that are actually there (or, for a deflated data set, within the inflated size allowed). Only a
//! data set that passes is handed to dicom-rs.
//!
//! The walk also keeps the few top-level values the node records on arrival (the identifying
//! UIDs, the patient and study attributes), so that the network path needs no other parser, and
//! notes where large values lie so that the pipeline can leave them out. It never reads pixel data.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::ops::Range;
use std::path::Path;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, uids, StandardDataDictionary};
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};

/// Sequences nested deeper than this are refused. Real images nest a few levels; structured
/// reports a few dozen at most; dicom-rs's recursive reader is safe far beyond this.
pub const MAX_SEQUENCE_DEPTH: usize = 64;
/// Data elements (at every level, items included) in one data set.
pub const MAX_ELEMENTS: usize = 200_000;
/// Encapsulated pixel data fragments in one data set (a fragment per frame is usual).
pub const MAX_FRAGMENTS: usize = 65_536;
/// Top-level values longer than this are not kept (none of the kept attributes is that long).
const MAX_KEPT_VALUE: u32 = 1024;
/// Top-level elements (Pixel Data aside) larger than this are left out when the pipeline reads
/// a data set ([`read_without_large_values`]): nothing the node uses is that large (a LUT is at
/// most 128 KiB), and a 300 MB private element should not be held in memory to analyse an image.
pub const LARGE_VALUE: u64 = 1 << 20;

/// The top-level attributes the walk keeps.
const KEPT: &[Tag] = &[
    tags::SPECIFIC_CHARACTER_SET,
    tags::SOP_CLASS_UID,
    tags::SOP_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::ACCESSION_NUMBER,
    tags::MODALITY,
    tags::STUDY_DESCRIPTION,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::BODY_PART_EXAMINED,
    tags::VIEW_POSITION,
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
    tags::SAMPLES_PER_PIXEL,
    tags::NUMBER_OF_FRAMES,
    tags::ROWS,
    tags::COLUMNS,
    tags::BITS_ALLOCATED,
];

const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Why a data set was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("element {tag} declares {declared} bytes but only {available} follow")]
    LengthBeyondData { tag: Tag, declared: u32, available: u64 },
    #[error("sequences are nested deeper than {MAX_SEQUENCE_DEPTH} levels")]
    TooDeep,
    #[error("more than {MAX_ELEMENTS} data elements")]
    TooManyElements,
    #[error("more than {MAX_FRAGMENTS} pixel data fragments")]
    TooManyFragments,
    #[error("the deflated data set inflates to more than {limit} bytes")]
    InflatesTooFar { limit: u64 },
    #[error("the data set ends inside {0}")]
    Truncated(&'static str),
    #[error("malformed data set: {0}")]
    Malformed(String),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("transfer syntax {0} is not one the node reads")]
    UnknownTransferSyntax(String),
    /// Reading the file failed (not the data's fault).
    #[error("cannot read the data set: {0}")]
    Io(#[source] io::Error),
}

impl ScanError {
    /// Whether the bytes are at fault (rather than the disk).
    pub fn is_invalid_data(&self) -> bool {
        !matches!(self, ScanError::Io(_))
    }
}

/// What the walk found: the kept top-level values and where the pixel data is.
#[derive(Debug, Default, Clone)]
pub struct Scanned {
    values: Vec<(Tag, Vec<u8>)>,
    explicit_vr: bool,
    /// From the file meta group, for a scanned file.
    pub transfer_syntax: String,
    /// Elements seen, at every level.
    pub elements: usize,
    /// The deepest sequence nesting seen.
    pub depth: usize,
    pub pixel_data: Option<PixelData>,
    /// Where the top-level elements larger than [`LARGE_VALUE`] (Pixel Data aside, header
    /// included) lie: file offsets for a scanned file (none for a deflated one), else offsets
    /// in the data set.
    pub large_values: Vec<Range<u64>>,
}

/// The top-level Pixel Data element.
#[derive(Debug, Default, Clone)]
pub struct PixelData {
    /// Native: the value's length in bytes. Encapsulated: the sum of the fragments' lengths.
    pub length: u64,
    /// Encapsulated: the number of fragments (the Basic Offset Table not counted).
    pub fragments: Option<usize>,
    /// Native: where the whole element lies (header and value) and its VR; file offsets for a
    /// scanned file, none for a deflated one.
    pub native: Option<(Range<u64>, VR)>,
}

impl Scanned {
    /// The last value of `tag` (a repeated element replaces the one before, as in dicom-rs).
    fn raw(&self, tag: Tag) -> Option<&[u8]> {
        self.values.iter().rev().find(|(t, _)| *t == tag).map(|(_, v)| v.as_slice())
    }

    /// A kept text value, decoded with the data set's Specific Character Set, trimmed of
    /// padding and with any NUL inside replaced ([`crate::domain::storable_text`]); `None` when
    /// absent or empty. Multi-valued texts keep their backslashes.
    pub fn text(&self, tag: Tag) -> Option<String> {
        let raw = self.raw(tag)?;
        let charset = self
            .raw(tags::SPECIFIC_CHARACTER_SET)
            .and_then(|cs| {
                String::from_utf8_lossy(cs)
                    .split('\\')
                    .map(str::trim)
                    .find_map(|c| (!c.is_empty()).then(|| SpecificCharacterSet::from_code(c)).flatten())
            })
            .unwrap_or_default();
        let text = charset.decode(raw).unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned());
        let text = crate::domain::storable_text(text.trim_matches(|c: char| c == '\0' || c == ' '));
        (!text.is_empty()).then_some(text)
    }

    /// A kept unsigned value: US (binary) or IS (text).
    pub fn uint(&self, tag: Tag) -> Option<u32> {
        let raw = self.raw(tag)?;
        let binary_us = tag != tags::NUMBER_OF_FRAMES;
        if binary_us {
            return raw.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32);
        }
        String::from_utf8_lossy(raw).trim_matches(|c: char| c == '\0' || c == ' ').parse().ok()
    }

    /// Whether the data set is in an explicit VR transfer syntax.
    pub fn explicit_vr(&self) -> bool {
        self.explicit_vr
    }
}

/// How the data set's bytes are laid out (always little endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Implicit,
    Explicit,
    DeflatedExplicit,
}

// Explicit VR Big Endian is retired (and never accepted by the SCP); it is named to be refused.
#[allow(deprecated)]
fn encoding_of(transfer_syntax: &str) -> Result<Encoding, ScanError> {
    let ts = transfer_syntax.trim_end_matches(['\0', ' ']);
    match ts {
        uids::IMPLICIT_VR_LITTLE_ENDIAN => Ok(Encoding::Implicit),
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN => Ok(Encoding::DeflatedExplicit),
        uids::EXPLICIT_VR_BIG_ENDIAN => Err(ScanError::UnknownTransferSyntax(ts.to_string())),
        // every other transfer syntax the node accepts (native and encapsulated) is explicit VR LE
        _ if ts.starts_with("1.2.840.10008.1.2") => Ok(Encoding::Explicit),
        _ => Err(ScanError::UnknownTransferSyntax(ts.to_string())),
    }
}

/// Walks the data set of a Part-10 file written by the spool. The file meta group is the node's
/// own (written before the peer's bytes) and is read with dicom-rs; the data set after it is
/// walked here. `max_inflated` bounds a deflated data set's inflated size.
pub fn scan_file(path: &Path, max_inflated: u64) -> Result<Scanned, ScanError> {
    let mut file = BufReader::new(File::open(path).map_err(ScanError::Io)?);
    let mut preamble = [0u8; 128];
    file.read_exact(&mut preamble).map_err(eof_as("the file preamble"))?;
    let meta = dicom_object::meta::FileMetaTable::from_reader(&mut file)
        .map_err(|e| ScanError::Malformed(format!("file meta group: {e}")))?;
    let start = file.stream_position().map_err(ScanError::Io)?;
    let total = file.get_ref().metadata().map_err(ScanError::Io)?.len();
    let transfer_syntax = meta.transfer_syntax().trim_end_matches(['\0', ' ']).to_string();
    let mut scanned = match encoding_of(&transfer_syntax)? {
        Encoding::DeflatedExplicit => {
            let inflated = flate2::read::DeflateDecoder::new(file).take(max_inflated.saturating_add(1));
            let mut input = Streamed { reader: BufReader::new(inflated) };
            let scanned = walk(&mut input, max_inflated.saturating_add(1), true);
            // the bound was reached: whatever the walk made of the cut, the data set is too large
            if input.reader.get_ref().limit() == 0 {
                return Err(ScanError::InflatesTooFar { limit: max_inflated });
            }
            // the decoder's refusal of a corrupt stream is the data's fault, not the disk's
            scanned.map_err(|e| match e {
                ScanError::Io(io) if matches!(io.kind(), io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData) => {
                    ScanError::Malformed(format!("the deflated data set cannot be inflated: {io}"))
                }
                other => other,
            })
        }
        encoding => {
            let mut input = Seekable { reader: file };
            walk(&mut input, total.saturating_sub(start), encoding == Encoding::Explicit).map(|mut scanned| {
                for range in &mut scanned.large_values {
                    *range = range.start + start..range.end + start;
                }
                if let Some((range, _)) = scanned.pixel_data.as_mut().and_then(|p| p.native.as_mut()) {
                    *range = range.start + start..range.end + start;
                }
                scanned
            })
        }
    }?;
    if encoding_of(&transfer_syntax)? == Encoding::DeflatedExplicit {
        scanned.large_values.clear();
        if let Some(pixel) = scanned.pixel_data.as_mut() {
            pixel.native = None;
        }
    }
    Ok(Scanned { transfer_syntax, ..scanned })
}

/// Reads a scanned Part-10 file with dicom-rs, leaving out its top-level values larger than
/// [`LARGE_VALUE`] (Pixel Data aside): what the pipeline holds in memory is the image and the
/// attributes it uses, whatever else the data set carries. Native pixel data is not parsed: its
/// bytes are read once, where the walk found them, into the value the decoder reads in place
/// (dicom-rs would read 16-bit samples into numbers, and every reader after it copy them back).
pub fn read_without_large_values(
    path: &Path,
    scanned: &Scanned,
) -> Result<dicom_object::DefaultDicomObject, ReadError> {
    let native = scanned.pixel_data.as_ref().and_then(|p| p.native.clone().map(|n| (n, p.length)));
    let mut skip = scanned.large_values.clone();
    if let Some(((element, _), _)) = &native {
        skip.push(element.clone());
        skip.sort_by_key(|r| r.start);
    }
    let mut file = File::open(path).map_err(ReadError::Io)?;
    let mut obj = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(Skipping { reader: BufReader::new(&file), skip, at: 0 })
        .map_err(ReadError::Dicom)?;
    if let Some(((element, vr), length)) = native {
        file.seek(io::SeekFrom::Start(element.end - length)).map_err(ReadError::Io)?;
        // read_to_end fills the reserved bytes without zeroing them first
        let mut value = Vec::with_capacity(length as usize);
        (&mut file).take(length).read_to_end(&mut value).map_err(ReadError::Io)?;
        if value.len() as u64 != length {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        obj.put(dicom_core::DataElement::new(tags::PIXEL_DATA, vr, dicom_core::PrimitiveValue::from(value)));
    }
    Ok(obj)
}

/// Why a scanned file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot open the file: {0}")]
    Io(#[source] io::Error),
    #[error("cannot read it as DICOM: {0}")]
    Dicom(#[source] dicom_object::ReadError),
}

/// A reader that leaves out byte ranges of the file under it (sorted, not overlapping; none:
/// the file as it is).
struct Skipping<'a> {
    reader: BufReader<&'a File>,
    skip: Vec<Range<u64>>,
    at: u64,
}

impl Read for Skipping<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(range) = self.skip.first().cloned() {
            if self.at < range.start {
                let n = (range.start - self.at).min(buf.len() as u64) as usize;
                let n = self.reader.read(&mut buf[..n])?;
                self.at += n as u64;
                return Ok(n);
            }
            let jump = i64::try_from(range.end - self.at).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            self.reader.seek_relative(jump)?;
            self.at = range.end;
            self.skip.remove(0);
        }
        let n = self.reader.read(buf)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Walks a data set held in memory, in the given transfer syntax (deflate not included).
pub fn scan_bytes(data: &[u8], transfer_syntax: &str) -> Result<Scanned, ScanError> {
    match encoding_of(transfer_syntax)? {
        Encoding::DeflatedExplicit => {
            Err(ScanError::UnknownTransferSyntax("deflated data sets are scanned from files".into()))
        }
        encoding => walk(&mut Slice { data, at: 0 }, data.len() as u64, encoding == Encoding::Explicit)
            .map(|s| Scanned { transfer_syntax: transfer_syntax.trim_end_matches(['\0', ' ']).to_string(), ..s }),
    }
}

/// Bytes the walk reads and skips.
trait Input {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()>;
    fn skip(&mut self, n: u64) -> io::Result<()>;
    /// Whether every byte has been read. Only a stream whose length is not known beforehand (an
    /// inflating decoder) can tell the data set's end this way; the others end at their length.
    fn exhausted(&mut self) -> io::Result<bool> {
        Ok(false)
    }
}

struct Seekable {
    reader: BufReader<File>,
}

impl Input for Seekable {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.reader.read_exact(buf)
    }
    fn skip(&mut self, n: u64) -> io::Result<()> {
        // lengths were checked against the file size, so this never seeks past the end
        let n = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // within the buffer when it can (most skipped values are short)
        self.reader.seek_relative(n)
    }
}

/// A stream that can only be read forward (an inflating decoder): skipping reads.
struct Streamed<R> {
    reader: R,
}

impl<R: io::BufRead> Input for Streamed<R> {
    fn exhausted(&mut self) -> io::Result<bool> {
        Ok(self.reader.fill_buf()?.is_empty())
    }
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.reader.read_exact(buf)
    }
    fn skip(&mut self, n: u64) -> io::Result<()> {
        if io::copy(&mut (&mut self.reader).take(n), &mut io::sink())? < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

struct Slice<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input for Slice<'_> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let end = self.at.checked_add(buf.len()).filter(|&e| e <= self.data.len());
        let end = end.ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self.data[self.at..end]);
        self.at = end;
        Ok(())
    }
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let end = usize::try_from(n).ok().and_then(|n| self.at.checked_add(n)).filter(|&e| e <= self.data.len());
        self.at = end.ok_or(io::ErrorKind::UnexpectedEof)?;
        Ok(())
    }
}

fn eof_as(what: &'static str) -> impl Fn(io::Error) -> ScanError {
    move |e| if e.kind() == io::ErrorKind::UnexpectedEof { ScanError::Truncated(what) } else { ScanError::Io(e) }
}

/// What the walk is inside of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// The data set itself, or a sequence item: data elements follow.
    Elements,
    /// A sequence: items follow.
    Sequence,
    /// Encapsulated pixel data: fragment items follow.
    Fragments,
}

#[derive(Debug, Clone, Copy)]
struct Container {
    level: Level,
    /// The position where it ends, when its length is defined.
    end: Option<u64>,
    /// Whether this is the top level (the data set itself).
    top: bool,
}

/// The walk: an explicit stack of containers, each element's declared length checked against
/// what its container (and the data) still holds before it is read or skipped.
fn walk(input: &mut dyn Input, total: u64, explicit_vr: bool) -> Result<Scanned, ScanError> {
    let mut scanned = Scanned { explicit_vr, ..Default::default() };
    let mut stack = vec![Container { level: Level::Elements, end: Some(total), top: true }];
    let mut pos: u64 = 0;
    let mut depth = 0usize;
    let mut fragments_seen = 0usize;
    loop {
        let Some(&here) = stack.last() else { return Ok(scanned) };
        // the end of a defined-length container
        if let Some(end) = here.end {
            if pos == end {
                stack.pop();
                if here.level == Level::Sequence {
                    depth -= 1;
                }
                if here.top {
                    return Ok(scanned);
                }
                continue;
            }
        }
        // an inflated data set's length is known only once the stream ends, between two elements
        if here.top && input.exhausted().map_err(eof_as("the deflated data set"))? {
            return Ok(scanned);
        }
        let available = here.end.unwrap_or(total).saturating_sub(pos).min(total.saturating_sub(pos));
        if available == 0 {
            // only the data set itself may end with the data; an open sequence or item may not
            return Err(ScanError::Truncated("an undefined-length sequence or item"));
        }
        if available < 8 {
            return Err(ScanError::Malformed(format!("{available} stray bytes at the end of an element list")));
        }
        let element_start = pos;
        let mut head = [0u8; 8];
        input.read_exact(&mut head).map_err(eof_as("an element header"))?;
        pos += 8;
        let tag = Tag(u16::from_le_bytes([head[0], head[1]]), u16::from_le_bytes([head[2], head[3]]));
        scanned.elements += 1;
        if scanned.elements > MAX_ELEMENTS {
            return Err(ScanError::TooManyElements);
        }
        let bounded = |declared: u32, pos: u64| -> Result<u64, ScanError> {
            let left = here.end.unwrap_or(total).min(total).saturating_sub(pos);
            if declared as u64 > left {
                return Err(ScanError::LengthBeyondData { tag, declared, available: left });
            }
            Ok(pos + declared as u64)
        };
        match here.level {
            Level::Sequence | Level::Fragments => {
                let length = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
                match tag {
                    SEQUENCE_END if here.end.is_none() => {
                        stack.pop();
                        if here.level == Level::Sequence {
                            depth -= 1;
                        }
                    }
                    ITEM if here.level == Level::Sequence => {
                        let end = if length == UNDEFINED { None } else { Some(bounded(length, pos)?) };
                        stack.push(Container { level: Level::Elements, end, top: false });
                    }
                    ITEM => {
                        if length == UNDEFINED {
                            return Err(ScanError::Malformed("a pixel data fragment of undefined length".into()));
                        }
                        bounded(length, pos)?;
                        fragments_seen += 1;
                        if fragments_seen > MAX_FRAGMENTS + 1 {
                            return Err(ScanError::TooManyFragments);
                        }
                        if let Some(pixel) = scanned.pixel_data.as_mut().filter(|_| stack.len() == 2) {
                            // the first item is the Basic Offset Table
                            if fragments_seen > 1 {
                                pixel.length += length as u64;
                                pixel.fragments = Some(fragments_seen - 1);
                            }
                        }
                        input.skip(length as u64).map_err(eof_as("a pixel data fragment"))?;
                        pos += length as u64;
                    }
                    other => {
                        return Err(ScanError::Malformed(format!("{other} where a sequence item was expected")));
                    }
                }
            }
            Level::Elements => {
                if tag == ITEM_END {
                    match (here.top, here.end) {
                        (false, None) => {
                            stack.pop();
                        }
                        (false, Some(_)) => {
                            return Err(ScanError::Malformed("an item delimiter inside a defined-length item".into()))
                        }
                        // dicom-rs ignores a stray item delimiter at the top level; so does the walk
                        (true, _) => {}
                    }
                    continue;
                }
                if tag.0 == 0xFFFE {
                    return Err(ScanError::Malformed(format!("{tag} where a data element was expected")));
                }
                let (vr, length) = if explicit_vr {
                    let vr = VR::from_binary([head[4], head[5]]);
                    match vr {
                        Some(vr) if has_long_length(vr) => {
                            let mut len = [0u8; 4];
                            input.read_exact(&mut len).map_err(eof_as("an element header"))?;
                            pos += 4;
                            (Some(vr), u32::from_le_bytes(len))
                        }
                        Some(vr) => (Some(vr), u16::from_le_bytes([head[6], head[7]]) as u32),
                        None => {
                            return Err(ScanError::Malformed(format!(
                                "element {tag} has an unknown VR {:?}",
                                String::from_utf8_lossy(&head[4..6])
                            )))
                        }
                    }
                } else {
                    let vr = if tag == tags::PIXEL_DATA {
                        Some(VR::OW)
                    } else {
                        StandardDataDictionary.by_tag(tag).map(|e| e.vr().relaxed())
                    };
                    (vr, u32::from_le_bytes([head[4], head[5], head[6], head[7]]))
                };
                if tag == tags::PIXEL_DATA && length == UNDEFINED {
                    if here.top {
                        scanned.pixel_data = Some(PixelData { fragments: Some(0), ..Default::default() });
                    }
                    fragments_seen = 0;
                    stack.push(Container { level: Level::Fragments, end: None, top: false });
                } else if vr == Some(VR::SQ) || length == UNDEFINED {
                    // dicom-rs reads any other undefined-length element as a sequence
                    depth += 1;
                    scanned.depth = scanned.depth.max(depth);
                    if depth > MAX_SEQUENCE_DEPTH {
                        return Err(ScanError::TooDeep);
                    }
                    let end = if length == UNDEFINED { None } else { Some(bounded(length, pos)?) };
                    if let (true, Some(end)) = (here.top, end) {
                        if length as u64 > LARGE_VALUE {
                            scanned.large_values.push(element_start..end);
                        }
                    }
                    stack.push(Container { level: Level::Sequence, end, top: false });
                } else {
                    // dicom-rs reads a binary value as whole numbers and would lose its place
                    // on the rest: such a value must hold a whole number of them
                    if let Some(size) = vr.and_then(number_size).filter(|size| length % size != 0) {
                        return Err(ScanError::Malformed(format!(
                            "element {tag} has {length} bytes, not a multiple of {size}"
                        )));
                    }
                    let end = bounded(length, pos)?;
                    if here.top && tag != tags::PIXEL_DATA && length as u64 > LARGE_VALUE {
                        scanned.large_values.push(element_start..end);
                    }
                    if here.top && tag == tags::PIXEL_DATA {
                        let native = Some((element_start..end, vr.unwrap_or(VR::OW)));
                        scanned.pixel_data = Some(PixelData { length: length as u64, fragments: None, native });
                    }
                    if here.top && length <= MAX_KEPT_VALUE && KEPT.contains(&tag) {
                        let mut value = vec![0u8; length as usize];
                        input.read_exact(&mut value).map_err(eof_as("an element value"))?;
                        scanned.values.push((tag, value));
                    } else {
                        input.skip(length as u64).map_err(eof_as("an element value"))?;
                    }
                    pos += length as u64;
                }
            }
        }
    }
}

/// The size of one number of a binary VR.
fn number_size(vr: VR) -> Option<u32> {
    match vr {
        VR::US | VR::SS | VR::OW => Some(2),
        VR::UL | VR::SL | VR::FL | VR::AT | VR::OF | VR::OL => Some(4),
        VR::FD | VR::SV | VR::UV | VR::OD | VR::OV => Some(8),
        _ => None,
    }
}

/// Explicit VRs whose length is a 32-bit field after two reserved bytes (PS3.5 7.1.2).
fn has_long_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPLICIT: &str = "1.2.840.10008.1.2.1";
    const IMPLICIT: &str = "1.2.840.10008.1.2";

    fn explicit_short(out: &mut Vec<u8>, group: u16, element: u16, vr: &[u8; 2], value: &[u8]) {
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
    }

    fn header(out: &mut Vec<u8>, group: u16, element: u16, length: u32) {
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
    }

    /// `levels` undefined-length sequences nested inside each other, in Implicit VR.
    fn nested(levels: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..levels {
            header(&mut out, 0x0040, 0xA730, UNDEFINED); // Content Sequence
            header(&mut out, 0xFFFE, 0xE000, UNDEFINED);
        }
        for _ in 0..levels {
            header(&mut out, 0xFFFE, 0xE00D, 0);
            header(&mut out, 0xFFFE, 0xE0DD, 0);
        }
        out
    }

    #[test]
    fn kept_values_are_read_and_decoded() {
        let mut data = Vec::new();
        explicit_short(&mut data, 0x0008, 0x0005, b"CS", b"ISO_IR 100");
        explicit_short(&mut data, 0x0008, 0x0018, b"UI", b"1.2.3\0");
        explicit_short(&mut data, 0x0010, 0x0010, b"PN", b"M\xfcller^J\xf6rg ");
        explicit_short(&mut data, 0x0028, 0x0010, b"US", &1841u16.to_le_bytes());
        let scanned = scan_bytes(&data, EXPLICIT).unwrap();
        assert_eq!(scanned.text(tags::SOP_INSTANCE_UID).as_deref(), Some("1.2.3"));
        assert_eq!(scanned.text(tags::PATIENT_NAME).as_deref(), Some("Müller^Jörg"));
        assert_eq!(scanned.uint(tags::ROWS), Some(1841));
        assert_eq!(scanned.elements, 4);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        assert_eq!(scan_bytes(&nested(MAX_SEQUENCE_DEPTH), IMPLICIT).unwrap().depth, MAX_SEQUENCE_DEPTH);
        assert!(matches!(scan_bytes(&nested(MAX_SEQUENCE_DEPTH + 1), IMPLICIT), Err(ScanError::TooDeep)));
        assert!(matches!(scan_bytes(&nested(100_000), IMPLICIT), Err(ScanError::TooDeep)));
    }

    #[test]
    fn lengths_beyond_the_data_are_refused_before_reading() {
        let mut data = Vec::new();
        explicit_short(&mut data, 0x0008, 0x0018, b"UI", b"1.2.3\0");
        data.extend_from_slice(&[0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0]);
        data.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        data.extend_from_slice(&[0; 64]);
        match scan_bytes(&data, EXPLICIT) {
            Err(ScanError::LengthBeyondData { declared: 0xFFFF_FFF0, available: 64, .. }) => {}
            other => panic!("{other:?}"),
        }
        // an item longer than its defined-length sequence
        let mut data = Vec::new();
        data.extend_from_slice(&[0x40, 0x00, 0x30, 0xA7, b'S', b'Q', 0, 0]);
        data.extend_from_slice(&16u32.to_le_bytes());
        header(&mut data, 0xFFFE, 0xE000, 100);
        data.extend_from_slice(&[0; 100]);
        assert!(matches!(scan_bytes(&data, EXPLICIT), Err(ScanError::LengthBeyondData { declared: 100, .. })));
    }

    /// Found by the fuzzer: a 10-byte UL that dicom-rs read as two numbers, losing its place and
    /// then allocating a 4 GB value out of the bytes after it.
    #[test]
    fn binary_values_must_hold_whole_numbers() {
        let mut data = Vec::new();
        header(&mut data, 0x0008, 0x0000, 10);
        data.extend_from_slice(&[0, 0, 0, 0xFE, 0xFF, 0xDD, 0xE0, 0, 0xE0, 0]);
        let refusal = scan_bytes(&data, IMPLICIT).unwrap_err().to_string();
        assert!(refusal.contains("not a multiple of 4"), "{refusal}");
    }

    #[test]
    fn open_sequences_at_the_end_are_truncated() {
        let data = nested(3);
        assert!(matches!(scan_bytes(&data[..data.len() - 8], IMPLICIT), Err(ScanError::Truncated(_))));
    }

    #[test]
    fn fragments_are_counted() {
        let mut data = Vec::new();
        data.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
        data.extend_from_slice(&UNDEFINED.to_le_bytes());
        header(&mut data, 0xFFFE, 0xE000, 0); // empty Basic Offset Table
        header(&mut data, 0xFFFE, 0xE000, 4);
        data.extend_from_slice(&[0xFF, 0x4F, 0xFF, 0x51]);
        header(&mut data, 0xFFFE, 0xE000, 2);
        data.extend_from_slice(&[1, 2]);
        header(&mut data, 0xFFFE, 0xE0DD, 0);
        let scanned = scan_bytes(&data, "1.2.840.10008.1.2.4.90").unwrap();
        let pixel = scanned.pixel_data.unwrap();
        assert_eq!(pixel.fragments, Some(2));
        assert_eq!(pixel.length, 6);
    }

    #[test]
    fn large_values_are_left_out_of_what_the_pipeline_reads() {
        use dicom_core::{DataElement, PrimitiveValue};
        use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
        let obj = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.1")),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3.4")),
            DataElement::new(Tag(0x0009, 0x1010), VR::OB, PrimitiveValue::from(vec![7u8; 3 << 20])),
            DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3")),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(2u16)),
            DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(vec![1u8, 2, 3, 4])),
        ]);
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.1")
            .media_storage_sop_instance_uid("1.2.3.4")
            .transfer_syntax(EXPLICIT);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.dcm");
        obj.with_meta(meta).unwrap().write_to_file(&path).unwrap();
        let scanned = scan_file(&path, 1 << 30).unwrap();
        assert_eq!(scanned.large_values.len(), 1);
        assert_eq!(scanned.text(tags::STUDY_INSTANCE_UID).as_deref(), Some("1.2.3"));
        let read = read_without_large_values(&path, &scanned).unwrap();
        assert!(read.element_opt(Tag(0x0009, 0x1010)).unwrap().is_none());
        assert_eq!(read.element(tags::ROWS).unwrap().to_int::<u16>().unwrap(), 2);
        assert_eq!(&*read.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap(), &[1, 2, 3, 4]);
    }

    /// A deflated Part-10 file as dcmtk and pydicom write it: the file meta group in the clear,
    /// the data set after it raw-deflated (PS3.5 A.5).
    fn deflated_file(dir: &Path, rows: u16) -> std::path::PathBuf {
        use dicom_core::{DataElement, PrimitiveValue};
        use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
        let obj = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.1")),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3.4")),
            DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from("Doe^Jane")),
            DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3")),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
            DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(vec![0u8; rows as usize * 64])),
        ]);
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.1")
            .media_storage_sop_instance_uid("1.2.3.4")
            .transfer_syntax(uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN);
        let path = dir.join("deflated.dcm");
        obj.with_meta(meta).unwrap().write_to_file(&path).unwrap();
        path
    }

    /// The walk used to read past the inflated data set's end as if an element followed:
    /// every deflated C-STORE was refused "the data set ends inside an element header".
    #[test]
    fn a_deflated_data_set_is_walked_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = deflated_file(dir.path(), 512);
        let scanned = scan_file(&path, 1 << 20).unwrap();
        assert_eq!(scanned.transfer_syntax, uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN);
        assert_eq!(scanned.text(tags::PATIENT_NAME).as_deref(), Some("Doe^Jane"));
        assert_eq!(scanned.uint(tags::ROWS), Some(512));
        assert_eq!(scanned.pixel_data.map(|p| p.length), Some(512 * 64));
        // inflated, the data set is over 32 KiB: within a smaller bound its pixel data cannot fit
        let refusal = scan_file(&path, 16 << 10).unwrap_err();
        assert!(refusal.is_invalid_data(), "{refusal}");
    }

    #[test]
    fn a_corrupt_or_cut_deflate_stream_is_the_data_s_fault() {
        let dir = tempfile::tempdir().unwrap();
        let path = deflated_file(dir.path(), 512);
        let bytes = std::fs::read(&path).unwrap();
        let meta_end = 132 + 12 + u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
        let cut = dir.path().join("cut.dcm");
        std::fs::write(&cut, &bytes[..meta_end + 40]).unwrap();
        let refusal = scan_file(&cut, 1 << 20).unwrap_err();
        assert!(refusal.is_invalid_data(), "{refusal}");
        let mut corrupt = bytes.clone();
        for b in &mut corrupt[meta_end..meta_end + 16] {
            *b = 0xFF;
        }
        std::fs::write(&cut, &corrupt).unwrap();
        let refusal = scan_file(&cut, 1 << 20).unwrap_err();
        assert!(refusal.is_invalid_data(), "{refusal}");
    }

    #[test]
    fn element_count_is_capped() {
        let mut data = Vec::new();
        for _ in 0..=MAX_ELEMENTS {
            header(&mut data, 0x0009, 0x1010, 0);
        }
        assert!(matches!(scan_bytes(&data, IMPLICIT), Err(ScanError::TooManyElements)));
    }
}
