//! Pixels: decoding a stored image, the Modality LUT, the VOI transform, the MONOCHROME1
//! inversion, and the resize and normalisation a model expects.
//!
//! The steps and their order are the contract in models/README.md ("Preprocessing"), whose
//! reference implementation is `models/training/src/pneumotriage_models/preprocess.py`.
//! dicom-pixeldata only decodes here: it is asked for the stored samples, and every transform
//! is applied by this module (dicom-pixeldata 0.10 ignores LUT sequences and never inverts
//! MONOCHROME1).

use dicom_core::Tag;

use crate::dicom::scan::{self, ScanError};

mod codestream;
mod mask;
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
        let length = pixel_data.value().to_bytes().map(|b| b.len() as u64).unwrap_or(0);
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
    let decoded = obj.decode_pixel_data().map_err(ImagingError::Decode)?;
    if decoded.samples_per_pixel() != 1 {
        return Err(ImagingError::NotGrayscale(format!("{} samples per pixel", decoded.samples_per_pixel())));
    }
    let photometric = decoded.photometric_interpretation().as_str().trim().to_string();
    if photometric != "MONOCHROME1" && photometric != "MONOCHROME2" {
        return Err(ImagingError::NotGrayscale(format!("photometric interpretation {photometric}")));
    }
    let (width, height) = (decoded.columns(), decoded.rows());
    let count = width as usize * height as usize;
    let bits_allocated = decoded.bits_allocated();
    let bits_stored = decoded.bits_stored();
    if !(1..=16).contains(&bits_stored) || bits_stored > bits_allocated || !matches!(bits_allocated, 8 | 16) {
        return Err(ImagingError::Invalid("Bits Allocated / Bits Stored"));
    }
    let signed = matches!(decoded.pixel_representation(), dicom_pixeldata::PixelRepresentation::Signed);
    let frame = decoded.frame_data(0).map_err(ImagingError::Decode)?;
    let samples = Samples::of(frame, count, bits_allocated)?;
    // Every transform depends on the stored value alone, and Bits Stored is at most 16: one
    // table from masked sample to display value, then one pass over the pixels.
    let mask = (1usize << bits_stored) - 1;
    let stored = |raw: usize| -> i32 {
        if signed && raw & (1 << (bits_stored - 1)) != 0 {
            raw as i32 - (1i32 << bits_stored)
        } else {
            raw as i32
        }
    };
    let modality = ModalityLut::of(obj, signed)?;
    let voi = Voi::of(obj, || {
        // no window: the range of the values present
        let mut present = vec![false; mask + 1];
        samples.for_each(|raw| present[raw & mask] = true);
        present.iter().enumerate().filter(|(_, &p)| p).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (raw, _)| {
            let v = modality.apply(stored(raw));
            (lo.min(v), hi.max(v))
        })
    })?;
    let invert = photometric == "MONOCHROME1";
    let table: Vec<f32> = (0..=mask)
        .map(|raw| {
            let u = voi.apply(modality.apply(stored(raw))) as f32;
            if invert {
                1.0 - u
            } else {
                u
            }
        })
        .collect();
    let pixels = samples.map(|raw| table[raw & mask]);
    Ok(DisplayImage { width, height, pixels })
}

/// The raw samples of a frame, 8 or 16 bits (little endian) each.
enum Samples<'a> {
    Bytes(&'a [u8]),
    Words(&'a [u8]),
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

    fn map<T>(&self, f: impl Fn(usize) -> T) -> Vec<T> {
        match self {
            Samples::Bytes(b) => b.iter().map(|&v| f(v as usize)).collect(),
            Samples::Words(w) => w.chunks_exact(2).map(|c| f(u16::from_le_bytes([c[0], c[1]]) as usize)).collect(),
        }
    }

    fn for_each(&self, mut f: impl FnMut(usize)) {
        match self {
            Samples::Bytes(b) => b.iter().for_each(|&v| f(v as usize)),
            Samples::Words(w) => w.chunks_exact(2).for_each(|c| f(u16::from_le_bytes([c[0], c[1]]) as usize)),
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
    let small = resize(image, pre.width, pre.height)?;
    let plane: Vec<f32> = small.pixels.iter().map(|v| (v - pre.mean) / pre.std).collect();
    Ok(plane.iter().copied().cycle().take(plane.len() * pre.channels as usize).collect())
}
