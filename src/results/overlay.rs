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

/// The banner's text and background colours.
const BANNER_TEXT: [u8; 3] = [255, 255, 255];
const BANNER_BACKGROUND: [u8; 3] = [0, 0, 0];

/// `rgb` (`width` × `height`) with a black strip above it holding `text` in white, in an 8×8
/// bitmap font scaled to the image (up to one line of text per 1/40 of its height, smaller if
/// the line would not fit across). Characters outside ASCII are drawn as `?`. Returns the new
/// pixels and height: the image itself is kept whole, nothing is drawn over it.
pub fn with_banner(rgb: &[u8], width: u32, height: u32, text: &str) -> (Vec<u8>, u32) {
    let w = width as usize;
    let chars: Vec<usize> = text.chars().map(|c| if c.is_ascii() { c as usize } else { '?' as usize }).collect();
    let fit = w / (chars.len() * 8 + 16).max(1);
    let scale = fit.min((height as usize / 320).max(1)).max(1);
    let pad = 4 * scale;
    let strip = 8 * scale + 2 * pad;
    let mut out = Vec::with_capacity(strip * w * 3 + rgb.len());
    for _ in 0..strip * w {
        out.extend_from_slice(&BANNER_BACKGROUND);
    }
    for (n, &c) in chars.iter().enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY[c];
        for (row, bits) in glyph.iter().enumerate() {
            for col in (0..8).filter(|col| bits & (1 << col) != 0) {
                for dy in 0..scale {
                    for dx in 0..scale {
                        let x = pad + (n * 8 + col) * scale + dx;
                        let y = pad + row * scale + dy;
                        if x < w {
                            out[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&BANNER_TEXT);
                        }
                    }
                }
            }
        }
    }
    out.extend_from_slice(rgb);
    (out, height + strip as u32)
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
    // deflate's fastest level: the default one spent 80 % of `infer --out` (and of drawing the
    // worklist's overlay) compressing, for files only 15 % smaller; png's own "fast" mode
    // (fdeflate) doubles the size of these noisy RGB images
    encoder.set_deflate_compression(png::DeflateCompression::Level(1));
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
    fn the_banner_sits_above_the_whole_image() {
        let image = DisplayImage { width: 400, height: 100, pixels: vec![0.5; 400 * 100] };
        let rgb = outlined_rgb(&image, None);
        let (out, height) = with_banner(&rgb, 400, 100, "AI");
        // scale 1 on a 100-pixel image: 8 rows of text and 4 of padding above and below
        assert_eq!(height, 116);
        assert_eq!(out.len(), 400 * 116 * 3);
        assert_eq!(&out[16 * 400 * 3..], &rgb[..], "the image follows the strip unchanged");
        let lit = out[..16 * 400 * 3].chunks(3).filter(|p| *p == BANNER_TEXT).count();
        let expected: u32 = [b'A', b'I']
            .iter()
            .map(|&c| font8x8::legacy::BASIC_LEGACY[c as usize].iter().map(|r| r.count_ones()).sum::<u32>())
            .sum();
        assert_eq!(lit as u32, expected, "each set bit of the glyphs is one white pixel");
    }

    #[test]
    fn dilation_grows_by_the_radius() {
        let mut one = vec![false; 49];
        one[24] = true; // centre of 7x7
        let grown = dilate(&one, 7, 7, 2);
        assert_eq!(grown.iter().filter(|&&b| b).count(), 25, "a 5x5 square");
    }
}
