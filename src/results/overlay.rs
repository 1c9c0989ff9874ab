//! Rendered views of an analysis: the model's input as a grey PNG, and the image with the
//! mask's outline drawn in.

use crate::imaging::DisplayImage;

/// The outline colour (RGB): a saturated yellow reads on any grey.
const OUTLINE: [u8; 3] = [255, 214, 0];

/// An 8-bit grey PNG of a 0..1 image (values outside are clipped).
pub fn grey_png(image: &DisplayImage) -> Result<Vec<u8>, png::EncodingError> {
    let pixels: Vec<u8> = image.pixels.iter().map(|&v| to_u8(v)).collect();
    encode(image.width, image.height, png::ColorType::Grayscale, &pixels)
}

/// An RGB PNG of the image with the mask's outline, drawn thicker on larger images.
pub fn outline_png(image: &DisplayImage, mask: Option<&[bool]>) -> Result<Vec<u8>, png::EncodingError> {
    let rgb = outlined_rgb(image, mask);
    encode(image.width, image.height, png::ColorType::Rgb, &rgb)
}

/// The image as RGB bytes with the outline of `mask` (row-major, the image's size) burned in.
pub fn outlined_rgb(image: &DisplayImage, mask: Option<&[bool]>) -> Vec<u8> {
    let mut rgb: Vec<u8> = image.pixels.iter().flat_map(|&v| [to_u8(v); 3]).collect();
    if let Some(mask) = mask {
        let (w, h) = (image.width as usize, image.height as usize);
        let radius = (w.max(h) / 512).max(1);
        let line = dilate(&edges(mask, w, h), w, h, radius);
        for (i, _) in line.iter().enumerate().filter(|(_, &on)| on) {
            rgb[i * 3..i * 3 + 3].copy_from_slice(&OUTLINE);
        }
    }
    rgb
}

/// Mask pixels with a 4-neighbour outside the mask (or on the image border).
pub fn edges(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let at = |x: usize, y: usize| mask[y * w + x];
    (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            mask[i]
                && (x == 0
                    || y == 0
                    || x + 1 == w
                    || y + 1 == h
                    || !at(x - 1, y)
                    || !at(x + 1, y)
                    || !at(x, y - 1)
                    || !at(x, y + 1))
        })
        .collect()
}

/// Square dilation by `radius`, separably: rows, then columns.
fn dilate(mask: &[bool], w: usize, h: usize, radius: usize) -> Vec<bool> {
    let pass = |src: &[bool], len: usize, lines: usize, index: &dyn Fn(usize, usize) -> usize| {
        let mut out = vec![false; src.len()];
        for line in 0..lines {
            let mut last_on: Option<usize> = None;
            // forward: within `radius` after an on pixel
            for pos in 0..len {
                if src[index(line, pos)] {
                    last_on = Some(pos);
                }
                if last_on.is_some_and(|p| pos - p <= radius) {
                    out[index(line, pos)] = true;
                }
            }
            last_on = None;
            // backward: within `radius` before an on pixel
            for pos in (0..len).rev() {
                if src[index(line, pos)] {
                    last_on = Some(pos);
                }
                if last_on.is_some_and(|p| p - pos <= radius) {
                    out[index(line, pos)] = true;
                }
            }
        }
        out
    };
    let rows = pass(mask, w, h, &|y, x| y * w + x);
    pass(&rows, h, w, &|x, y| y * w + x)
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

fn encode(width: u32, height: u32, color: png::ColorType, data: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(data)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outline_is_the_mask_border_only() {
        // a 3x3 square in a 5x5 image: its 8 border pixels, not its centre
        let mut mask = vec![false; 25];
        for y in 1..4 {
            for x in 1..4 {
                mask[y * 5 + x] = true;
            }
        }
        let e = edges(&mask, 5, 5);
        assert_eq!(e.iter().filter(|&&b| b).count(), 8);
        assert!(!e[12], "the centre is inside");
        // drawn on a 9x9 image, the square at 3..6: one pixel of line around the border pixels
        let mut big = vec![false; 81];
        for y in 3..6 {
            for x in 3..6 {
                big[y * 9 + x] = true;
            }
        }
        let image = DisplayImage { width: 9, height: 9, pixels: vec![0.5; 81] };
        let rgb = outlined_rgb(&image, Some(&big));
        let px = |x: usize, y: usize| &rgb[(y * 9 + x) * 3..(y * 9 + x) * 3 + 3];
        assert_eq!(px(0, 0), &[128, 128, 128], "far from the mask: the image");
        assert_eq!(px(2, 2), &OUTLINE, "next to the border: the line");
        assert_eq!(px(1, 4), &[128, 128, 128]);
    }

    #[test]
    fn dilation_grows_by_the_radius() {
        let mut one = vec![false; 49];
        one[24] = true; // centre of 7x7
        let grown = dilate(&one, 7, 7, 2);
        assert_eq!(grown.iter().filter(|&&b| b).count(), 25, "a 5x5 square");
    }
}
