//! SIIM-ACR run-length encoding of masks, both ways: the encoder that stores a result's mask,
//! and the decoder that paints the labelled masks (`evaluate`) and a stored mask (the
//! worklist's overlay) back; and the CSV the labels come in.

use std::collections::HashMap;
use std::num::ParseIntError;
use std::path::{Path, PathBuf};

/// What is wrong with an encoding or a labels file.
#[derive(Debug, thiserror::Error)]
pub enum RleError {
    #[error("RLE holds something that is not a count: {0}")]
    NotANumber(#[source] ParseIntError),
    #[error("RLE has an odd count of numbers")]
    OddCount,
    #[error("RLE runs past the image")]
    PastImage,
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: expected ImageId,EncodedPixels", path.display())]
    Csv { path: PathBuf, line: usize },
}

/// A mask as SIIM-ACR run-length encoding: column-major, each start relative to the end of the
/// previous run ("-1" when empty).
pub fn siim_rle(mask: &[bool], width: u32, height: u32) -> String {
    let (w, h) = (width as usize, height as usize);
    // Only the columns with a pixel set need the (cache-unfriendly) column-major walk: found
    // with one row-major pass.
    let mut used = vec![false; w];
    for row in mask.chunks_exact(w) {
        for (u, &m) in used.iter_mut().zip(row) {
            *u |= m;
        }
    }
    let (Some(first), Some(last)) = (used.iter().position(|&u| u), used.iter().rposition(|&u| u)) else {
        return "-1".into();
    };
    let mut out = String::new();
    let (mut run_start, mut last_end) = (None, 0usize);
    let mut emit = |start: usize, end: usize, last_end: &mut usize| {
        use std::fmt::Write;
        let separator = if out.is_empty() { "" } else { " " };
        let _ = write!(out, "{separator}{} {}", start - *last_end, end - start);
        *last_end = end;
    };
    // Columns are walked 64 at a time: each row's 64 values become the bits of one word (a
    // row-major read), and the columns are then walked in those h words, which stay in the
    // cache; a column walk of the mask itself misses the cache at every row.
    let mut words = vec![0u64; h];
    let mut x0 = first;
    while x0 <= last {
        let n = (last + 1 - x0).min(64);
        for (y, word) in words.iter_mut().enumerate() {
            let row = &mask[y * w + x0..y * w + x0 + n];
            *word = row.iter().enumerate().fold(0, |bits, (i, &m)| bits | (u64::from(m) << i));
        }
        for column in 0..n {
            let x = x0 + column;
            for (y, word) in words.iter().enumerate() {
                let on = word >> column & 1 == 1;
                match (on, run_start) {
                    (true, None) => run_start = Some(x * h + y),
                    (false, Some(start)) => {
                        emit(start, x * h + y, &mut last_end);
                        run_start = None;
                    }
                    _ => {}
                }
            }
        }
        x0 += n;
    }
    if let Some(start) = run_start {
        emit(start, (last + 1) * h, &mut last_end);
    }
    out
}

/// The masks of a SIIM-ACR CSV (`ImageId, EncodedPixels`), several rows of one image merged,
/// in the order ImageIds first appear.
pub fn read_rle_csv(path: &Path) -> Result<Vec<(String, Vec<String>)>, RleError> {
    // SIIM-ACR's own CSV is 2 MB; a bound keeps a wrong path (a device) from filling memory
    let bytes = crate::config::read_named_file(path, 256 << 20)
        .map_err(|source| RleError::Read { path: path.to_path_buf(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    let mut order: Vec<(String, Vec<String>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (n == 0 && line.starts_with("ImageId")) {
            continue;
        }
        let Some((id, rle)) = line.split_once(',') else {
            return Err(RleError::Csv { path: path.to_path_buf(), line: n + 1 });
        };
        let (id, rle) = (id.trim().to_string(), rle.trim().to_string());
        let slot = *index.entry(id.clone()).or_insert_with(|| {
            order.push((id, Vec::new()));
            order.len() - 1
        });
        order[slot].1.push(rle);
    }
    Ok(order)
}

/// Paints SIIM-ACR run-length encodings (column-major, starts relative to the end of the
/// previous run, "-1" for none) into a row-major mask.
pub fn paint_rle(mask: &mut [bool], rle: &str, width: usize, height: usize) -> Result<(), RleError> {
    let rle = rle.trim();
    if rle.is_empty() || rle == "-1" {
        return Ok(());
    }
    let numbers: Vec<usize> =
        rle.split_whitespace().map(str::parse).collect::<Result<_, _>>().map_err(RleError::NotANumber)?;
    if numbers.len() % 2 != 0 {
        return Err(RleError::OddCount);
    }
    let mut position = 0usize;
    for pair in numbers.chunks_exact(2) {
        // checked: the counts come from a file, and a huge one must not wrap round
        let start = position.checked_add(pair[0]).ok_or(RleError::PastImage)?;
        let end = start.checked_add(pair[1]).filter(|&end| end <= width * height).ok_or(RleError::PastImage)?;
        for p in start..end {
            mask[(p % height) * width + p / height] = true;
        }
        position = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_is_column_major_with_relative_starts() {
        // 3 wide, 2 high; set (row 0, col 1), (row 1, col 1), (row 1, col 2)
        let mask = [false, true, false, false, true, true];
        // column-major order: (0,0) (1,0) (0,1) (1,1) (0,2) (1,2) -> 0 0 1 1 0 1
        assert_eq!(siim_rle(&mask, 3, 2), "2 2 1 1");
        assert_eq!(siim_rle(&[false; 6], 3, 2), "-1");
    }

    #[test]
    fn rle_round_trips_through_the_encoder() {
        // wider than one 64-column block, with runs across blocks and to the last pixel
        for (w, h) in [(7, 5), (150, 40), (64, 3), (129, 1)] {
            let mask: Vec<bool> = (0..w * h).map(|i| (i * 7 + i / 3) % 5 < 2 || i % w > w - 3).collect();
            let mut back = vec![false; w * h];
            paint_rle(&mut back, &siim_rle(&mask, w as u32, h as u32), w, h).unwrap();
            assert_eq!(back, mask, "{w}x{h}");
        }
        let (w, h) = (7, 5);
        let mut back = vec![false; w * h];
        assert!(paint_rle(&mut back, "3 100", w, h).is_err(), "past the image");
        assert!(paint_rle(&mut back, "3", w, h).is_err(), "odd count");
        assert!(paint_rle(&mut back, &format!("1 1 {} 1", usize::MAX), w, h).is_err(), "a start that would wrap");
    }

    #[test]
    fn csv_rows_of_one_image_are_merged_in_first_seen_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-rle.csv");
        std::fs::write(&path, "ImageId, EncodedPixels\nb, 1 2\na, -1\nb, 5 1\n").unwrap();
        let rows = read_rle_csv(&path).unwrap();
        assert_eq!(rows, vec![("b".into(), vec!["1 2".into(), "5 1".into()]), ("a".into(), vec!["-1".into()])]);
    }
}
