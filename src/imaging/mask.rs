//! A segmenter's probability map brought to the source image's size and thresholded, computed
//! only where the mask can be set.
//!
//! The filter is [`super::resize`]'s (antialiased bilinear): each output value is a weighted mean
//! of its source window with non-negative weights, so it reaches the threshold only where some
//! source value in its window does. The output box whose windows can meet the source values at or
//! above the threshold is resized alone (the source cropped to it, read with its surroundings as
//! the full resize reads them); the rest of the mask is unset without computing anything, and no
//! full-size float image is made (a 3000x3000 film's would be 36 MB).

use std::ops::Range;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::{DisplayImage, ImagingError};

/// `map` resized to `width` x `height` with [`super::resize`]'s filter, then `>= cut`, row-major.
pub fn mask_at_size(map: &DisplayImage, width: u32, height: u32, cut: f32) -> Result<Vec<bool>, ImagingError> {
    let w = width as usize;
    let mut mask = vec![false; w * height as usize];
    let Some((columns, rows)) = reaching(map, cut) else { return Ok(mask) };
    let (xs, ys) = (output_span(columns, map.width, width), output_span(rows, map.height, height));
    if xs.is_empty() || ys.is_empty() {
        return Ok(mask);
    }
    let (left, right) = source_span(&xs, map.width, width);
    let (top, bottom) = source_span(&ys, map.height, height);
    let src = ImageRef::new(map.width, map.height, bytemuck::cast_slice(&map.pixels), PixelType::F32)
        .map_err(|e| ImagingError::Resize(e.into()))?;
    let mut dst = Image::new(xs.len() as u32, ys.len() as u32, PixelType::F32);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)).crop(
        left,
        top,
        right - left,
        bottom - top,
    );
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| ImagingError::Resize(e.into()))?;
    // the buffer is bytes, not necessarily aligned for f32
    for (y, row) in ys.zip(dst.buffer().chunks_exact(4 * xs.len())) {
        for (m, v) in mask[y * w + xs.start..y * w + xs.end].iter_mut().zip(row.chunks_exact(4)) {
            *m = f32::from_ne_bytes([v[0], v[1], v[2], v[3]]) >= cut;
        }
    }
    Ok(mask)
}

/// The source columns and rows (inclusive) of the values at or above `cut`; `None` when none is.
fn reaching(map: &DisplayImage, cut: f32) -> Option<((usize, usize), (usize, usize))> {
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for (y, row) in map.pixels.chunks_exact(map.width as usize).enumerate() {
        if let (Some(first), Some(last)) = (row.iter().position(|&v| v >= cut), row.iter().rposition(|&v| v >= cut)) {
            (x0, x1, y0, y1) = (x0.min(first), x1.max(last), y0.min(y), y);
        }
    }
    (x0 != usize::MAX).then_some(((x0, x1), (y0, y1)))
}

/// The output indices whose filter windows can meet source indices `lo..=hi` of one axis, with a
/// pixel to spare: a window reaches `max(scale, 1)` source pixels either side of its centre.
fn output_span((lo, hi): (usize, usize), in_size: u32, out_size: u32) -> Range<usize> {
    let scale = f64::from(in_size) / f64::from(out_size);
    let margin = scale.max(1.0).ceil() + 1.0;
    let start = ((lo as f64 - margin) / scale).floor().max(0.0) as usize;
    let end = (((hi + 1) as f64 + margin) / scale).ceil().min(f64::from(out_size)) as usize;
    start..end
}

/// The source interval that output indices `span` cover, within the image.
fn source_span(span: &Range<usize>, in_size: u32, out_size: u32) -> (f64, f64) {
    let scale = f64::from(in_size) / f64::from(out_size);
    let end = if span.end == out_size as usize { f64::from(in_size) } else { span.end as f64 * scale };
    (span.start as f64 * scale, end.min(f64::from(in_size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth map with a few blobs (what a segmenter gives), values 0..1.
    fn map(width: u32, height: u32, seed: u64) -> DisplayImage {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as f32 / (1u64 << 31) as f32
        };
        let blobs: Vec<(f32, f32, f32)> = (0..3)
            .map(|_| (next() * width as f32, next() * height as f32, 2.0 + next() * width as f32 / 6.0))
            .collect();
        let pixels = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x as f32, y as f32)))
            .map(|(x, y)| {
                blobs
                    .iter()
                    .map(|&(bx, by, r)| (-((x - bx).powi(2) + (y - by).powi(2)) / (r * r)).exp())
                    .fold(0.0, f32::max)
            })
            .collect();
        DisplayImage { width, height, pixels }
    }

    /// The same mask as the full-size resize thresholded, pixel for pixel (the crop's filter
    /// coefficients are the full resize's).
    #[test]
    fn equals_the_full_resize_thresholded() {
        for (i, &(sw, sh, w, h)) in
            [(256, 256, 2048, 2048), (256, 256, 1841, 1955), (64, 48, 640, 480), (32, 32, 17, 23), (8, 8, 8, 8)]
                .iter()
                .enumerate()
        {
            let small = map(sw, sh, 7 + i as u64);
            for cut in [0.05f32, 0.5, 0.9, 1.5] {
                let full = super::super::resize(&small, w, h).unwrap();
                let fast = mask_at_size(&small, w, h, cut).unwrap();
                let set = fast.iter().filter(|&&m| m).count();
                let differing = full.pixels.iter().zip(&fast).filter(|(&v, &m)| (v >= cut) != m).count();
                assert_eq!(differing, 0, "{sw}x{sh} -> {w}x{h} at {cut}: pixels differ");
                if cut > 1.0 {
                    assert_eq!(set, 0);
                } else if cut == 0.05 {
                    assert!(set > 0, "{sw}x{sh} -> {w}x{h}: the blobs reach 0.05");
                }
            }
        }
    }

    /// One value over the threshold, at a corner, an edge or inside, scaled up and down: the
    /// box reaches as far as the filter does, no farther.
    #[test]
    fn a_single_pixel_at_the_borders_gives_the_full_resizes_mask() {
        for (sw, sh, w, h) in [(16, 16, 100, 90), (100, 90, 16, 16), (7, 5, 7, 5)] {
            for (x, y) in [(0, 0), (sw - 1, sh - 1), (sw / 2, 0), (sw / 2, sh / 2)] {
                let mut small = DisplayImage { width: sw, height: sh, pixels: vec![0.1; (sw * sh) as usize] };
                small.pixels[(y * sw + x) as usize] = 0.9;
                let full = super::super::resize(&small, w, h).unwrap();
                let fast = mask_at_size(&small, w, h, 0.3).unwrap();
                let expected: Vec<bool> = full.pixels.iter().map(|&v| v >= 0.3).collect();
                assert_eq!(fast, expected, "{sw}x{sh} -> {w}x{h}, ({x}, {y})");
                // scaled down, the pixel is averaged away
                assert_eq!(fast.iter().any(|&m| m), w >= sw, "{sw}x{sh} -> {w}x{h}, ({x}, {y})");
            }
        }
    }
}
