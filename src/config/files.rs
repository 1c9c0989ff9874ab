//! Reading the files a configuration names: each must be a regular file, read within a bound.

use std::path::Path;

/// The most bytes read of a text file the configuration names (itself, a manifest, a PEM file).
pub const TEXT_FILE_LIMIT: u64 = 1 << 20;
/// The most bytes read of a model file (ONNX's protobuf cannot exceed 2 GiB).
pub const MODEL_FILE_LIMIT: u64 = 4 << 30;

/// Reads a file the configuration names: it must be a regular file (not a directory, a FIFO
/// that would block or a device like `/dev/zero` that never ends) of at most `limit` bytes, and
/// no more than that is ever read, whatever the file does meanwhile.
pub fn read_named_file(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a directory" } else { "a special file (a device, a FIFO or a socket)" };
        return Err(Error::new(ErrorKind::InvalidInput, format!("is {kind}, not a regular file")));
    }
    let too_large = || Error::new(ErrorKind::InvalidData, format!("is larger than {limit} bytes"));
    if meta.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_named_file`] for text (UTF-8) of at most [`TEXT_FILE_LIMIT`] bytes.
pub fn read_named_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_named_file(path, TEXT_FILE_LIMIT)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "is not UTF-8 text"))
}
