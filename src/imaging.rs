//! Pixels: decoding a stored image, the Modality LUT, the VOI transform, the MONOCHROME1
//! inversion, and the resize and normalisation a model expects.
//!
//! The steps and their order are the contract in models/README.md ("Preprocessing"), whose
//! reference implementation is `models/training/src/pneumotriage_models/preprocess.py`.
//! The decoders (dicom-pixeldata; openjpeg for a JPEG 2000 frame) only decode here: they are
//! asked for the stored samples, and every transform is applied by this module
//! (dicom-pixeldata 0.10 ignores LUT sequences and never inverts MONOCHROME1). The analysis
//! path ([`model_inputs`]) goes from samples to the models' tensors in one pass, without the
//! full-size displayed image that [`display_image`] makes for inspection.

use dicom_core::{DicomValue, PrimitiveValue, Tag};

use crate::dicom::scan::{self, ScanError};

mod codestream;
mod mask;
mod resample;
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use dicom_pixeldata::PixelDecoder;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
pub use mask::mask_at_size;

#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    #[error("cannot decode the pixel data: {0}")]
    Decode(#[source] dicom_pixeldata::Error),
    #[error("{bytes} bytes of pixel data for {samples} samples")]
    ShortFrame { bytes: usize, samples: usize },
    #[error("cannot read it as DICOM: {0}")]
    Read(#[source] dicom_object::ReadError),
    #[error("not a single grayscale frame: {0}")]
    NotGrayscale(String),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("cannot resize: {0}")]
    Resize(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Larger than `inference.max_pixels`: not decoded.
    #[error("{pixels} pixels exceed the pixel budget of {limit} (inference.max_pixels)")]
    OverBudget { pixels: u64, limit: u64 },
    /// The pixel data contradicts the data set (a codestream that claims another size): not decoded.
    #[error("pixel data inconsistent with the data set: {0}")]
    Inconsistent(String),
    /// The data set failed the bounded structure check.
    #[error("{0}")]
    Refused(#[source] ScanError),
    #[error("cannot read the file: {0}")]
    Io(#[source] std::io::Error),
}

/// Opens a stored data set for analysis, checking it first: its structure within the scan's
/// limits ([`crate::dicom::scan`]), then dicom-rs parses it, leaving out the large values the node does
/// not use. Call [`check_pixels`] on it before decoding.
pub fn open_checked(
    path: &std::path::Path,
    max_dataset_bytes: u64,
) -> Result<FileDicomObject<InMemDicomObject>, ImagingError> {
    let scanned = scan::scan_file(path, max_dataset_bytes).map_err(|e| match e {
        ScanError::Io(io) => ImagingError::Io(io),
        other => ImagingError::Refused(other),
    })?;
    scan::read_without_large_values(path, &scanned).map_err(|e| match e {
        scan::ReadError::Io(io) => ImagingError::Io(io),
        scan::ReadError::Dicom(e) => ImagingError::Read(e),
    })
}

/// The pixel budget and the codestream check, on the attributes the decoder will read: Rows x
/// Columns x frames x samples within `max_pixels`, native pixel data as long as they need, and
/// a compressed frame's own header (JPEG, JPEG-LS, JPEG 2000; RLE's segment table) in agreement
/// with them. No decoder may run before it: decoders size their buffers from the codestream.
pub fn check_pixels(obj: &FileDicomObject<InMemDicomObject>, max_pixels: u64) -> Result<(), ImagingError> {
    let Ok(pixel_data) = obj.element(tags::PIXEL_DATA) else { return Err(ImagingError::Invalid("Pixel Data")) };
    let number = |tag| obj.element(tag).ok().map(|e| e.to_int::<u32>().ok());
    let (Some(Some(rows @ 1..)), Some(Some(columns @ 1..))) = (number(tags::ROWS), number(tags::COLUMNS)) else {
        return Err(ImagingError::Invalid("Rows / Columns"));
    };
    let (Some(Some(samples @ 1..)), Some(Some(bits_allocated @ 1..))) =
        (number(tags::SAMPLES_PER_PIXEL), number(tags::BITS_ALLOCATED))
    else {
        return Err(ImagingError::Invalid("Samples per Pixel / Bits Allocated"));
    };
    let frames = match number(tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(Some(n @ 1..)) => n,
        Some(_) => return Err(ImagingError::Invalid("Number of Frames")),
    };
    let pixels = rows as u64 * columns as u64 * frames as u64 * samples as u64;
    if pixels > max_pixels {
        return Err(ImagingError::OverBudget { pixels, limit: max_pixels });
    }
    let Some(fragments) = pixel_data.value().fragments() else {
        let needed = pixels * bits_allocated.div_ceil(8) as u64;
        let length = pixel_data.value().primitive().map_or(0, |v| v.calculate_byte_len() as u64);
        if length < needed {
            return Err(ImagingError::Inconsistent(format!("{length} bytes of native pixel data, {needed} needed")));
        }
        return Ok(());
    };
    let transfer_syntax = obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']);
    if transfer_syntax == dicom_dictionary_std::uids::RLE_LOSSLESS {
        let segments = samples as usize * bits_allocated.div_ceil(8) as usize;
        for fragment in fragments {
            codestream::check_rle_frame(fragment, segments, rows as usize * columns as usize)
                .map_err(ImagingError::Inconsistent)?;
        }
        return Ok(());
    }
    let first = fragments.first().map(Vec::as_slice).unwrap_or_default();
    let header = codestream::frame_header(transfer_syntax, first)
        .map_err(|e| ImagingError::Inconsistent(format!("codestream header: {e}")))?;
    if let Some(header) = header {
        if (header.width, header.height) != (columns, rows) {
            return Err(ImagingError::Inconsistent(format!(
                "the codestream says {}x{}, Columns x Rows say {columns}x{rows}",
                header.width, header.height
            )));
        }
        if header.precision > bits_allocated {
            return Err(ImagingError::Inconsistent(format!(
                "the codestream has {}-bit samples, Bits Allocated says {bits_allocated}",
                header.precision
            )));
        }
        if header.components != samples {
            return Err(ImagingError::Inconsistent(format!(
                "the codestream has {} components, Samples per Pixel says {samples}",
                header.components
            )));
        }
    }
    Ok(())
}

/// An image as displayed: one value per pixel in 0..1, 1 = bright (dense), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct DisplayImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<f32>,
}

/// What a model's input needs (the manifest's fields).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub mean: f32,
    pub std: f32,
}

/// Decodes the first frame and applies Modality LUT, VOI and the MONOCHROME1 inversion.
pub fn display_image(obj: &FileDicomObject<InMemDicomObject>) -> Result<DisplayImage, ImagingError> {
    with_samples(obj, |layout, samples, display| {
        let width = layout.columns as usize;
        let mut pixels = vec![0f32; width * layout.rows as usize];
        for (y, row) in pixels.chunks_exact_mut(width).enumerate() {
            samples.row(y, width, display, row);
        }
        Ok(DisplayImage { width: layout.columns, height: layout.rows, pixels })
    })
}

/// What the models need of an image, made in one pass over its samples: each model's input
/// tensor, the image's size, and the displayed image's mean and standard deviation.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInputs {
    pub width: u32,
    pub height: u32,
    pub mean: f32,
    pub deviation: f32,
    /// One per [`Preprocess`] asked for, in order.
    pub tensors: Vec<Vec<f32>>,
    /// How long the samples took to be had (decompressed, or found in place); the rest of the
    /// pass is preprocessing.
    pub decoded_in: std::time::Duration,
}

/// [`display_image`] then [`to_tensor`] for each of `models`, and the displayed image's mean and
/// standard deviation, without the full-size displayed image: each row of samples is looked up,
/// counted and summed into the output rows while it is in the cache (a 3000x3000 film's displayed
/// image is 36 MB that would be written once and read twice more).
pub fn model_inputs(
    obj: &FileDicomObject<InMemDicomObject>,
    models: &[Preprocess],
) -> Result<ModelInputs, ImagingError> {
    let started = std::time::Instant::now();
    with_samples(obj, |layout, samples, display| {
        let decoded_in = started.elapsed();
        let width = layout.columns as usize;
        let fill = |y: usize, row: &mut [f32]| samples.row(y, width, display, row);
        Ok(inputs_from_rows(layout.columns, layout.rows, fill, models, decoded_in))
    })
}

/// [`model_inputs`] of an image already displayed (when the displayed image is kept anyway:
/// the overlay, `infer --out`): the same tensors and statistics, from its rows.
pub fn model_inputs_of(image: &DisplayImage, models: &[Preprocess], decoded_in: std::time::Duration) -> ModelInputs {
    let width = image.width as usize;
    let fill = |y: usize, row: &mut [f32]| row.copy_from_slice(&image.pixels[y * width..(y + 1) * width]);
    inputs_from_rows(image.width, image.height, fill, models, decoded_in)
}

/// The pass itself: each displayed row (`fill` writes row `y`) counted and fed to the resizer
/// of each model size while it is in the cache (once per size).
fn inputs_from_rows(
    width: u32,
    height: u32,
    mut fill: impl FnMut(usize, &mut [f32]),
    models: &[Preprocess],
    decoded_in: std::time::Duration,
) -> ModelInputs {
    // one resizer per size: the classifier and the segmenter often take the same
    let mut sizes: Vec<(u32, u32)> = models.iter().map(|m| (m.width, m.height)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut resizers: Vec<resample::Resizer> =
        sizes.iter().map(|&(w, h)| resample::Resizer::new(width, height, w, h)).collect();
    let mut row = vec![0f32; width as usize];
    let mut moments = Moments::default();
    for y in 0..height as usize {
        fill(y, &mut row);
        moments.add(&row);
        for resizer in &mut resizers {
            resizer.push_row(&row);
        }
    }
    let (mean, deviation) = moments.mean_and_deviation();
    let planes: Vec<Vec<f32>> = resizers.into_iter().map(resample::Resizer::finish).collect();
    let plane_of = |pre: &Preprocess| {
        &planes[sizes.binary_search(&(pre.width, pre.height)).expect("each model's size has its resizer")]
    };
    let tensors = models.iter().map(|pre| normalised(plane_of(pre), pre)).collect();
    ModelInputs { width, height, mean, deviation, tensors, decoded_in }
}

/// The mean and standard deviation of an image's values.
pub fn mean_and_deviation(pixels: &[f32]) -> (f32, f32) {
    let mut moments = Moments::default();
    moments.add(pixels);
    moments.mean_and_deviation()
}

/// Running sums of values and of their squares.
#[derive(Default)]
struct Moments {
    count: usize,
    sum: f64,
    squares: f64,
}

impl Moments {
    /// Adds a run of values (a row): summed in sixteen f32 lanes side by side, then in f64; a
    /// single running sum would wait for each addition before the next.
    fn add(&mut self, values: &[f32]) {
        const LANES: usize = 16;
        let (mut sums, mut squares) = ([0f32; LANES], [0f32; LANES]);
        // f32 lanes stay exact enough over a few hundred values each (values in 0..1): the
        // run is cut into blocks before they are added to the f64 totals
        for block in values.chunks(LANES * 256) {
            let chunks = block.chunks_exact(LANES);
            let rest = chunks.remainder();
            for chunk in chunks {
                for lane in 0..LANES {
                    sums[lane] += chunk[lane];
                    squares[lane] += chunk[lane] * chunk[lane];
                }
            }
            self.sum +=
                sums.iter().map(|&v| f64::from(v)).sum::<f64>() + rest.iter().map(|&v| f64::from(v)).sum::<f64>();
            self.squares += squares.iter().map(|&v| f64::from(v)).sum::<f64>()
                + rest.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
            (sums, squares) = ([0f32; LANES], [0f32; LANES]);
        }
        self.count += values.len();
    }

    fn mean_and_deviation(&self) -> (f32, f32) {
        let n = self.count.max(1) as f64;
        let mean = self.sum / n;
        // values lie in 0..1: the cancellation costs nothing near the input checks' thresholds
        let variance = (self.squares / n - mean * mean).max(0.0);
        (mean as f32, variance.sqrt() as f32)
    }
}

/// The first frame's samples with the way from sample to display value, handed to `f`.
/// Native pixel data is read in place; a single JPEG 2000 frame is decoded by openjpeg and read
/// as decoded; the other compressed frames go through dicom-pixeldata.
fn with_samples<R>(
    obj: &FileDicomObject<InMemDicomObject>,
    f: impl FnOnce(&Layout, &Samples, &ToDisplay) -> Result<R, ImagingError>,
) -> Result<R, ImagingError> {
    let layout = Layout::of(obj)?;
    let pixel_data = obj.element(tags::PIXEL_DATA).map_err(|_| ImagingError::Invalid("Pixel Data"))?;
    let (converted, decoded, j2k);
    let count = layout.columns as usize * layout.rows as usize;
    let samples = match pixel_data.value() {
        // read in place (see scan::read_without_large_values)
        DicomValue::Primitive(PrimitiveValue::U8(bytes)) => Samples::of(bytes, count, layout.bits_allocated)?,
        // a data set dicom-rs parsed whole (a deflated one) holds 16-bit samples as numbers
        DicomValue::Primitive(value) => {
            converted = value.to_bytes();
            Samples::of(&converted, count, layout.bits_allocated)?
        }
        DicomValue::PixelSequence(sequence) if layout.frames == 1 && is_jpeg2000(obj.meta().transfer_syntax()) => {
            j2k = decode_jpeg2000(sequence.fragments(), &layout)?;
            Samples::Ints(&j2k.components()[0].data()[..count])
        }
        _ => {
            decoded = obj.decode_pixel_data().map_err(ImagingError::Decode)?;
            Samples::of(decoded.frame_data(0).map_err(ImagingError::Decode)?, count, layout.bits_allocated)?
        }
    };
    let display = ToDisplay::of(obj, &layout, &samples)?;
    f(&layout, &samples, &display)
}

/// JPEG 2000 (Part 1, lossless or not; High-Throughput JPEG 2000 too: openjpeg reads both).
fn is_jpeg2000(transfer_syntax: &str) -> bool {
    let ts = transfer_syntax.trim_end_matches(['\0', ' ']);
    [
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    ]
    .contains(&ts)
}

/// The first frame of JPEG 2000 pixel data, decoded by openjpeg on every core; its samples are
/// read as the decoder gives them (dicom-pixeldata writes each into 16-bit bytes first).
fn decode_jpeg2000(fragments: &[Vec<u8>], layout: &Layout) -> Result<jpeg2k::Image, ImagingError> {
    // a single frame: every fragment is part of it
    let joined;
    let codestream: &[u8] = match fragments {
        [one] => one,
        several => {
            joined = several.concat();
            &joined
        }
    };
    let image = jpeg2k::Image::from_bytes(codestream)
        .map_err(|e| ImagingError::Inconsistent(format!("the JPEG 2000 codestream cannot be decoded: {e}")))?;
    let component = image
        .components()
        .first()
        .ok_or(ImagingError::Inconsistent("a JPEG 2000 codestream without components".into()))?;
    if (component.width(), component.height()) != (layout.columns, layout.rows) {
        return Err(ImagingError::Inconsistent(format!(
            "the JPEG 2000 codestream decodes to {}x{}, Columns x Rows say {}x{}",
            component.width(),
            component.height(),
            layout.columns,
            layout.rows
        )));
    }
    Ok(image)
}

/// What the pixel data's bytes are: the attributes of the Image Pixel module the decode reads.
struct Layout {
    frames: u32,
    rows: u32,
    columns: u32,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
    monochrome1: bool,
}

impl Layout {
    /// The mask of the stored bits and their top (sign) bit where samples are signed, else 0.
    fn stored_bits(&self) -> (u32, u32) {
        let bits = u32::from(self.bits_stored);
        ((1u32 << bits) - 1, if self.signed { 1u32 << (bits - 1) } else { 0 })
    }

    fn of(obj: &InMemDicomObject) -> Result<Layout, ImagingError> {
        let number = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u32>().ok());
        let samples = number(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        if samples != 1 {
            return Err(ImagingError::NotGrayscale(format!("{samples} samples per pixel")));
        }
        let photometric = obj
            .element_opt(tags::PHOTOMETRIC_INTERPRETATION)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_matches(|c: char| c == ' ' || c == '\0').to_string())
            .unwrap_or_default();
        if photometric != "MONOCHROME1" && photometric != "MONOCHROME2" {
            return Err(ImagingError::NotGrayscale(format!("photometric interpretation {photometric}")));
        }
        let (Some(rows @ 1..), Some(columns @ 1..)) = (number(tags::ROWS), number(tags::COLUMNS)) else {
            return Err(ImagingError::Invalid("Rows / Columns"));
        };
        let (Some(bits_allocated), Some(bits_stored)) = (number(tags::BITS_ALLOCATED), number(tags::BITS_STORED))
        else {
            return Err(ImagingError::Invalid("Bits Allocated / Bits Stored"));
        };
        if !(1..=16).contains(&bits_stored) || bits_stored > bits_allocated || !matches!(bits_allocated, 8 | 16) {
            return Err(ImagingError::Invalid("Bits Allocated / Bits Stored"));
        }
        Ok(Layout {
            frames: obj
                .element_opt(tags::NUMBER_OF_FRAMES)
                .ok()
                .flatten()
                .and_then(|e| {
                    e.to_str().ok().and_then(|s| s.trim_matches(|c: char| c == ' ' || c == '\0').parse().ok())
                })
                .unwrap_or(1),
            rows,
            columns,
            bits_allocated: bits_allocated as u16,
            bits_stored: bits_stored as u16,
            signed: number(tags::PIXEL_REPRESENTATION) == Some(1),
            monochrome1: photometric == "MONOCHROME1",
        })
    }
}

/// From a sample to its display value (0..1), the bits above Bits Stored ignored: every
/// transform depends on the stored value alone.
enum ToDisplay {
    /// Where each step is a line (a rescale, then a linear window or the values' range), the
    /// whole is one, clamped to 0..1: computed on a row at once, in vector lanes.
    Line(Line),
    /// Otherwise (a LUT, a sigmoid window, a one-value window) a table of every sample value,
    /// indexed by the whole sample (8 bits, else 16), so that the pass needs no mask.
    Table(Vec<f32>),
}

impl ToDisplay {
    fn of(obj: &InMemDicomObject, layout: &Layout, samples: &Samples) -> Result<ToDisplay, ImagingError> {
        let (mask, sign) = layout.stored_bits();
        let modality = ModalityLut::of(obj, layout.signed)?;
        let voi = Voi::of(obj, || {
            // no window: the range of the values present
            let mut present = vec![false; mask as usize + 1];
            samples.for_each(|raw| present[raw & mask as usize] = true);
            present.iter().enumerate().filter(|(_, &p)| p).fold(
                (f64::INFINITY, f64::NEG_INFINITY),
                |(lo, hi), (raw, _)| {
                    let v = modality.apply(stored_value(raw as u32, mask, sign));
                    (lo.min(v), hi.max(v))
                },
            )
        })?;
        let whole_samples = if matches!(samples, Samples::Bytes(_)) { 8 } else { 16 };
        Ok(ToDisplay::line(&modality, &voi, layout)
            .unwrap_or_else(|| ToDisplay::table(&modality, &voi, layout, whole_samples)))
    }

    /// The line, where there is one: u = a (slope s + intercept) + b for a stored value s.
    fn line(modality: &ModalityLut, voi: &Voi, layout: &Layout) -> Option<ToDisplay> {
        let (&ModalityLut::Rescale { slope, intercept }, Some((a, b))) = (modality, voi.line()) else { return None };
        let scale = a * slope;
        // where u is 0.5; far outside the samples' range (or a zero slope) the table is as good
        let middle = (0.5 - (a * intercept + b)) / scale;
        if !middle.is_finite() || middle.abs() > f64::from(1 << 24) {
            return None;
        }
        let origin = middle.floor();
        let scale = if layout.monochrome1 { -scale } else { scale };
        let (mask, sign) = layout.stored_bits();
        Some(ToDisplay::Line(Line {
            mask,
            sign,
            origin: origin as i32,
            fraction: (middle - origin) as f32,
            scale: scale as f32,
        }))
    }

    /// Every value of a sample of `whole_samples` bits, through the Modality LUT, the VOI and
    /// the MONOCHROME1 inversion.
    fn table(modality: &ModalityLut, voi: &Voi, layout: &Layout, whole_samples: u32) -> ToDisplay {
        let (mask, sign) = layout.stored_bits();
        let by_stored: Vec<f32> = (0..=mask)
            .map(|raw| {
                let u = voi.apply(modality.apply(stored_value(raw, mask, sign))) as f32;
                if layout.monochrome1 {
                    1.0 - u
                } else {
                    u
                }
            })
            .collect();
        ToDisplay::Table((0..1usize << whole_samples).map(|raw| by_stored[raw & mask as usize]).collect())
    }
}

/// `scale` (s - middle) + 0.5 clamped to 0..1 for a stored value s, where the middle is
/// `origin` + `fraction`: the distance to it is exact in f32 however far the window's centre is
/// from zero.
#[derive(Debug, Clone, Copy)]
struct Line {
    mask: u32,
    sign: u32,
    origin: i32,
    fraction: f32,
    scale: f32,
}

impl Line {
    /// The display value of a raw sample.
    #[inline]
    fn at(&self, raw: u32) -> f32 {
        let from_middle = stored_value(raw, self.mask, self.sign).wrapping_sub(self.origin) as f32 - self.fraction;
        (from_middle * self.scale + 0.5).clamp(0.0, 1.0)
    }
}

/// A sample's stored value: the bits above Bits Stored dropped (`mask`), and the value
/// sign-extended where `sign` (its top bit) is set; branch-free, so that a row's vectorises.
#[inline]
fn stored_value(raw: u32, mask: u32, sign: u32) -> i32 {
    ((raw & mask) ^ sign) as i32 - sign as i32
}

/// The raw samples of a frame, 8 or 16 bits (little endian) each.
enum Samples<'a> {
    Bytes(&'a [u8]),
    Words(&'a [u8]),
    /// As a JPEG 2000 decoder gives them (a signed sample negative).
    Ints(&'a [i32]),
}

impl<'a> Samples<'a> {
    fn of(frame: &'a [u8], count: usize, bits_allocated: u16) -> Result<Samples<'a>, ImagingError> {
        let bytes_per_sample = bits_allocated as usize / 8;
        if frame.len() < count * bytes_per_sample {
            return Err(ImagingError::ShortFrame { bytes: frame.len(), samples: count });
        }
        Ok(match bytes_per_sample {
            1 => Samples::Bytes(&frame[..count]),
            _ => Samples::Words(&frame[..count * 2]),
        })
    }

    /// Row `y` of an image `width` samples wide, through `display`, into `out`.
    fn row(&self, y: usize, width: usize, display: &ToDisplay, out: &mut [f32]) {
        match display {
            ToDisplay::Table(table) => self.row_with(y, width, out, |raw| table[raw as u16 as usize]),
            ToDisplay::Line(line) => self.row_with(y, width, out, |raw| line.at(raw)),
        }
    }

    /// Row `y` with `f` from each raw sample (as 32 bits; a decoder's signed value's low 16 are
    /// the sample) to its value.
    #[inline]
    fn row_with(&self, y: usize, width: usize, out: &mut [f32], f: impl Fn(u32) -> f32) {
        let (start, end) = (y * width, (y + 1) * width);
        match self {
            Samples::Bytes(b) => out.iter_mut().zip(&b[start..end]).for_each(|(o, &v)| *o = f(u32::from(v))),
            Samples::Words(w) => out
                .iter_mut()
                .zip(w[start * 2..end * 2].chunks_exact(2))
                .for_each(|(o, c)| *o = f(u32::from(u16::from_le_bytes([c[0], c[1]])))),
            Samples::Ints(i) => out.iter_mut().zip(&i[start..end]).for_each(|(o, &v)| *o = f(u32::from(v as u16))),
        }
    }

    fn for_each(&self, mut f: impl FnMut(usize)) {
        match self {
            Samples::Bytes(b) => b.iter().for_each(|&v| f(v as usize)),
            Samples::Words(w) => w.chunks_exact(2).for_each(|c| f(u16::from_le_bytes([c[0], c[1]]) as usize)),
            Samples::Ints(i) => i.iter().for_each(|&v| f(v as u16 as usize)),
        }
    }
}

/// A lookup table of a Modality or VOI LUT Sequence item.
struct Lut {
    first: i64,
    data: Vec<f64>,
    bits: u32,
}

impl Lut {
    /// The first item of a LUT sequence, if the object has one.
    fn first_item(obj: &InMemDicomObject, sequence: Tag, signed: bool) -> Result<Option<Lut>, ImagingError> {
        let Ok(Some(seq)) = obj.element_opt(sequence) else { return Ok(None) };
        let Some(item) = seq.items().and_then(|items| items.first()) else { return Ok(None) };
        let descriptor: Vec<i64> = item
            .element(tags::LUT_DESCRIPTOR)
            .ok()
            .and_then(|e| e.to_multi_int::<i64>().ok())
            .ok_or(ImagingError::Invalid("LUT Descriptor"))?;
        let [count, first, bits] = descriptor[..] else { return Err(ImagingError::Invalid("LUT Descriptor")) };
        // the first stored value mapped: signed when the pixel data is (PS3.3 C.11.1.1), which
        // a descriptor written as US can only say by wrapping around
        let first = if signed && first > 32767 { first - 65536 } else { first };
        let count = if count == 0 { 65536 } else { count as usize & 0xFFFF };
        let data: Vec<f64> = item
            .element(tags::LUT_DATA)
            .ok()
            .and_then(|e| e.to_multi_int::<u16>().ok())
            .ok_or(ImagingError::Invalid("LUT Data"))?
            .into_iter()
            .map(f64::from)
            .collect();
        if data.len() < count || !(1..=16).contains(&bits) {
            return Err(ImagingError::Invalid("LUT Data"));
        }
        Ok(Some(Lut { first, data: data[..count].to_vec(), bits: bits as u32 }))
    }

    fn apply(&self, v: f64) -> f64 {
        let i = (v.round() as i64 - self.first).clamp(0, self.data.len() as i64 - 1);
        self.data[i as usize]
    }
}

enum ModalityLut {
    Rescale { slope: f64, intercept: f64 },
    Table(Lut),
}

impl ModalityLut {
    fn of(obj: &InMemDicomObject, signed: bool) -> Result<ModalityLut, ImagingError> {
        if let Some(lut) = Lut::first_item(obj, tags::MODALITY_LUT_SEQUENCE, signed)? {
            return Ok(ModalityLut::Table(lut));
        }
        let number = |tag, default| first_f64(obj, tag).unwrap_or(default);
        Ok(ModalityLut::Rescale {
            slope: number(tags::RESCALE_SLOPE, 1.0),
            intercept: number(tags::RESCALE_INTERCEPT, 0.0),
        })
    }

    fn apply(&self, stored: i32) -> f64 {
        match self {
            ModalityLut::Rescale { slope, intercept } => stored as f64 * slope + intercept,
            ModalityLut::Table(lut) => lut.apply(stored as f64),
        }
    }
}

enum Voi {
    Table(Lut),
    Window { center: f64, width: f64, function: WindowFunction },
    Range { low: f64, high: f64 },
}

#[derive(Clone, Copy)]
enum WindowFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

impl Voi {
    /// The first VOI LUT, else the first window, else the range (low, high) `range` computes.
    fn of(obj: &InMemDicomObject, range: impl FnOnce() -> (f64, f64)) -> Result<Voi, ImagingError> {
        // the VOI LUT's input is the Modality LUT's output, taken as unsigned unless negative
        if let Some(lut) = Lut::first_item(obj, tags::VOILUT_SEQUENCE, false)? {
            return Ok(Voi::Table(lut));
        }
        if let (Some(center), Some(width)) = (first_f64(obj, tags::WINDOW_CENTER), first_f64(obj, tags::WINDOW_WIDTH)) {
            let function = match obj.element_opt(tags::VOILUT_FUNCTION).ok().flatten().and_then(|e| e.to_str().ok()) {
                Some(f) if f.trim() == "LINEAR_EXACT" => WindowFunction::LinearExact,
                Some(f) if f.trim() == "SIGMOID" => WindowFunction::Sigmoid,
                _ => WindowFunction::Linear,
            };
            return Ok(Voi::Window { center, width, function });
        }
        let (low, high) = range();
        Ok(Voi::Range { low, high })
    }

    /// `(a, b)` where the output is the line `a v + b` clamped to 0..1: a linear window wider
    /// than one value, or a range of more than one value; `None` for a table, a sigmoid, a
    /// one-value window or range.
    fn line(&self) -> Option<(f64, f64)> {
        match *self {
            Voi::Range { low, high } if high > low => Some((1.0 / (high - low), -low / (high - low))),
            Voi::Window { center, width, function: WindowFunction::LinearExact } => {
                let width = width.max(1e-6);
                Some((1.0 / width, 0.5 - center / width))
            }
            Voi::Window { center, width, function: WindowFunction::Linear } if width > 1.0 => {
                Some((1.0 / (width - 1.0), 0.5 - (center - 0.5) / (width - 1.0)))
            }
            Voi::Range { .. } | Voi::Window { .. } | Voi::Table(_) => None,
        }
    }

    /// PS3.3 C.11.2.1.2 with an output range of 0..1.
    fn apply(&self, v: f64) -> f64 {
        let out = match *self {
            Voi::Table(ref lut) => lut.apply(v) / ((1u64 << lut.bits) - 1) as f64,
            Voi::Range { low, high } if high > low => (v - low) / (high - low),
            Voi::Range { .. } => 0.0,
            Voi::Window { center, width, function: WindowFunction::Sigmoid } => {
                1.0 / (1.0 + (-4.0 * (v - center) / width.max(1e-6)).exp())
            }
            Voi::Window { center, width, function: WindowFunction::LinearExact } => {
                (v - center) / width.max(1e-6) + 0.5
            }
            Voi::Window { center, width, function: WindowFunction::Linear } => {
                let width = width.max(1.0);
                if width == 1.0 {
                    if v >= center - 0.5 {
                        1.0
                    } else {
                        0.0
                    }
                } else {
                    (v - (center - 0.5)) / (width - 1.0) + 0.5
                }
            }
        };
        out.clamp(0.0, 1.0)
    }
}

fn first_f64(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.to_multi_float64().ok()).and_then(|v| v.first().copied())
}

/// Antialiased bilinear resize (the convolution filter Pillow's BILINEAR uses).
pub fn resize(image: &DisplayImage, width: u32, height: u32) -> Result<DisplayImage, ImagingError> {
    if (image.width, image.height) == (width, height) {
        return Ok(image.clone());
    }
    let src = ImageRef::new(image.width, image.height, bytemuck::cast_slice(&image.pixels), PixelType::F32)
        .map_err(|e| ImagingError::Resize(e.into()))?;
    let mut dst = Image::new(width, height, PixelType::F32);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| ImagingError::Resize(e.into()))?;
    let pixels = dst.buffer().chunks_exact(4).map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(DisplayImage { width, height, pixels })
}

/// A model's input tensor, (channels, height, width) row-major: resized, normalised, the grey
/// channel repeated.
pub fn to_tensor(image: &DisplayImage, pre: &Preprocess) -> Result<Vec<f32>, ImagingError> {
    Ok(normalised(&resize(image, pre.width, pre.height)?.pixels, pre))
}

/// An image at a model's size as its input tensor: normalised, the grey channel repeated.
fn normalised(plane: &[f32], pre: &Preprocess) -> Vec<f32> {
    let plane: Vec<f32> = plane.iter().map(|v| (v - pre.mean) / pre.std).collect();
    plane.iter().copied().cycle().take(plane.len() * pre.channels as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, VR};

    /// A header with the tags that decide the display values (text values, as in a file).
    fn header(elements: &[(Tag, VR, &str)]) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        let base = [(tags::ROWS, VR::US, "2"), (tags::COLUMNS, VR::US, "2"), (tags::BITS_ALLOCATED, VR::US, "16")];
        for &(tag, vr, value) in base.iter().chain(elements) {
            obj.put(DataElement::new(tag, vr, value));
        }
        obj
    }

    /// The line gives what the table gives, for every 16-bit sample: unsigned and signed, 12 to
    /// 16 bits stored, rescaled, windows narrow, wide and far from zero, LINEAR_EXACT, the range
    /// of the values present, MONOCHROME1. The cases without a line keep the table.
    #[test]
    fn the_line_is_the_table_for_every_sample() {
        let every: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let samples = Samples::Words(&every);
        let cases: &[&[(Tag, VR, &str)]] = &[
            &[
                (tags::BITS_STORED, VR::US, "15"),
                (tags::WINDOW_CENTER, VR::DS, "15000"),
                (tags::WINDOW_WIDTH, VR::DS, "30000"),
            ],
            &[
                (tags::BITS_STORED, VR::US, "12"),
                (tags::WINDOW_CENTER, VR::DS, "2047.5"),
                (tags::WINDOW_WIDTH, VR::DS, "7"),
            ],
            &[
                (tags::BITS_STORED, VR::US, "16"),
                (tags::WINDOW_CENTER, VR::DS, "61234.25"),
                (tags::WINDOW_WIDTH, VR::DS, "400"),
            ],
            &[
                (tags::BITS_STORED, VR::US, "12"),
                (tags::PIXEL_REPRESENTATION, VR::US, "1"),
                (tags::RESCALE_SLOPE, VR::DS, "0.5"),
                (tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
                (tags::WINDOW_CENTER, VR::DS, "-600"),
                (tags::WINDOW_WIDTH, VR::DS, "1500"),
            ],
            &[
                (tags::BITS_STORED, VR::US, "16"),
                (tags::PIXEL_REPRESENTATION, VR::US, "1"),
                (tags::WINDOW_CENTER, VR::DS, "40"),
                (tags::WINDOW_WIDTH, VR::DS, "80"),
                (tags::VOILUT_FUNCTION, VR::CS, "LINEAR_EXACT"),
            ],
            &[(tags::BITS_STORED, VR::US, "14"), (tags::RESCALE_SLOPE, VR::DS, "2.5")],
        ];
        for (i, case) in cases.iter().enumerate() {
            for photometric in ["MONOCHROME2", "MONOCHROME1"] {
                let obj = header(&[case, &[(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric)][..]].concat());
                let layout = Layout::of(&obj).unwrap();
                let display = ToDisplay::of(&obj, &layout, &samples).unwrap();
                let ToDisplay::Line(line) = display else { panic!("case {i}: a line") };
                let modality = ModalityLut::of(&obj, layout.signed).unwrap();
                let voi = Voi::of(&obj, || {
                    // the range the line was made with: every stored value is present
                    let (mask, sign) = layout.stored_bits();
                    (0..=mask)
                        .map(|raw| modality.apply(stored_value(raw, mask, sign)))
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
                })
                .unwrap();
                let ToDisplay::Table(table) = ToDisplay::table(&modality, &voi, &layout, 16) else { unreachable!() };
                let worst =
                    (0..=u32::from(u16::MAX)).map(|raw| (line.at(raw) - table[raw as usize]).abs()).fold(0.0, f32::max);
                assert!(worst < 1e-6, "case {i} {photometric}: the line is {worst} from the table");
                let inside =
                    (0..=u32::from(u16::MAX)).filter(|&raw| (0.01..0.99).contains(&table[raw as usize])).count();
                assert!(inside > 0, "case {i}: some values fall inside the window");
            }
        }
        // a sigmoid and a one-value window have no line
        for case in [
            [(tags::VOILUT_FUNCTION, VR::CS, "SIGMOID"), (tags::WINDOW_WIDTH, VR::DS, "80")],
            [(tags::VOILUT_FUNCTION, VR::CS, "LINEAR"), (tags::WINDOW_WIDTH, VR::DS, "1")],
        ] {
            let obj = header(
                &[
                    &case[..],
                    &[
                        (tags::BITS_STORED, VR::US, "12"),
                        (tags::WINDOW_CENTER, VR::DS, "40"),
                        (tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
                    ],
                ]
                .concat(),
            );
            let layout = Layout::of(&obj).unwrap();
            assert!(matches!(ToDisplay::of(&obj, &layout, &samples).unwrap(), ToDisplay::Table(_)));
        }
    }
}
