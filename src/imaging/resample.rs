//! The antialiased bilinear resize of [`super::resize`] (Pillow's `BILINEAR`: a triangle filter
//! stretched by the scale when shrinking, its weights normalised), fed one source row at a time,
//! so that a decoded image reaches a model's size without a full-size float image in between.
//!
//! Separable: each source row is added into the output rows it weighs in as it arrives, and
//! those rows are resized horizontally at the end (Pillow goes horizontally first; the filter is
//! linear, so the order changes only the rounding).

/// The filter's weights along one axis: for each output index, the first source index it reads
/// and its weights.
struct Axis {
    starts: Vec<usize>,
    /// `taps` weights per output index (zero past the window's end).
    weights: Vec<f32>,
    taps: usize,
}

impl Axis {
    /// Pillow's `precompute_coeffs` for the bilinear filter (support 1).
    fn new(in_size: u32, out_size: u32) -> Axis {
        let scale = f64::from(in_size) / f64::from(out_size);
        let filter_scale = scale.max(1.0);
        let support = filter_scale;
        let taps = support.ceil() as usize * 2 + 1;
        let mut starts = Vec::with_capacity(out_size as usize);
        let mut weights = vec![0f32; taps * out_size as usize];
        for (i, window) in weights.chunks_exact_mut(taps).enumerate() {
            let center = (i as f64 + 0.5) * scale;
            // C's (int) truncates toward zero; a negative start is clamped to 0 either way
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
            let raw: Vec<f64> = (start..end.max(start))
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filter_scale).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = raw.iter().sum();
            for (w, r) in window.iter_mut().zip(&raw) {
                *w = if total == 0.0 { 0.0 } else { (r / total) as f32 };
            }
            starts.push(start);
        }
        Axis { starts, weights, taps }
    }

    /// Output index `i`'s first source index and weights, cut to the `available` source values.
    fn window(&self, i: usize, available: usize) -> (usize, &[f32]) {
        let start = self.starts[i];
        let weights = &self.weights[i * self.taps..(i + 1) * self.taps];
        (start, &weights[..self.taps.min(available.saturating_sub(start))])
    }
}

/// One target size, fed the source rows in order.
pub(super) struct Resizer {
    in_width: usize,
    in_height: usize,
    out_width: usize,
    columns: Axis,
    rows: Axis,
    /// Each output row at the source's width, summed from the source rows so far (`in_width`
    /// values each).
    vertical: Vec<f32>,
    /// The next source row, and the first output row it can still reach.
    next: usize,
    first: usize,
}

impl Resizer {
    pub fn new(in_width: u32, in_height: u32, out_width: u32, out_height: u32) -> Resizer {
        Resizer {
            in_width: in_width as usize,
            in_height: in_height as usize,
            out_width: out_width as usize,
            columns: Axis::new(in_width, out_width),
            rows: Axis::new(in_height, out_height),
            vertical: vec![0f32; in_width as usize * out_height as usize],
            next: 0,
            first: 0,
        }
    }

    /// The next source row (`in_width` values): added, with its weight, to the two or three
    /// output rows whose windows hold it (contiguous rows: the additions vectorise, where a
    /// horizontal pass first would take a short weighted sum per output value).
    pub fn push_row(&mut self, row: &[f32]) {
        let y = self.next;
        self.next += 1;
        let out_height = self.rows.starts.len();
        while self.first < out_height && self.rows.starts[self.first] + self.rows.taps <= y {
            self.first += 1;
        }
        for j in self.first..out_height {
            let (start, weights) = self.rows.window(j, self.in_height);
            if start > y {
                break;
            }
            let Some(&w) = weights.get(y - start) else { continue };
            if w != 0.0 {
                let sum = &mut self.vertical[j * self.in_width..(j + 1) * self.in_width];
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += w * v);
            }
        }
    }

    /// The image at the target size, row-major, once every source row has been pushed.
    pub fn finish(self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.out_width * self.rows.starts.len());
        for sum in self.vertical.chunks_exact(self.in_width.max(1)) {
            for x in 0..self.out_width {
                let (start, weights) = self.columns.window(x, self.in_width);
                out.push(dot(weights, &sum[start..start + weights.len()]));
            }
        }
        out
    }
}

/// `Σ w·v` in four lanes side by side (a single running sum waits for each addition).
fn dot(weights: &[f32], values: &[f32]) -> f32 {
    let mut lanes = [0f32; 4];
    let (w4, v4) = (weights.chunks_exact(4), values.chunks_exact(4));
    let rest: f32 = w4.remainder().iter().zip(v4.remainder()).map(|(w, v)| w * v).sum();
    for (w, v) in w4.zip(v4) {
        for lane in 0..4 {
            lanes[lane] += w[lane] * v[lane];
        }
    }
    lanes.iter().sum::<f32>() + rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{resize, DisplayImage};

    fn image(width: u32, height: u32) -> DisplayImage {
        // a smooth ramp with sharp edges and noise: what a radiograph has
        let pixels = (0..width * height)
            .map(|i| {
                let (x, y) = (i % width, i / width);
                let noise = ((i.wrapping_mul(2_654_435_761)) >> 16) as f32 / 65536.0;
                let edge = if (x / 17 + y / 23) % 2 == 0 { 0.3 } else { 0.0 };
                (x as f32 / width as f32 * 0.5 + edge + noise * 0.2).min(1.0)
            })
            .collect();
        DisplayImage { width, height, pixels }
    }

    fn streamed(image: &DisplayImage, width: u32, height: u32) -> Vec<f32> {
        let mut resizer = Resizer::new(image.width, image.height, width, height);
        for row in image.pixels.chunks_exact(image.width as usize) {
            resizer.push_row(row);
        }
        resizer.finish()
    }

    #[test]
    fn rows_in_give_the_whole_image_resize() {
        for ((w, h), (tw, th)) in
            [((1841, 1955), (256, 256)), ((300, 200), (256, 256)), ((64, 100), (256, 256)), ((257, 256), (256, 256))]
        {
            let source = image(w, h);
            let whole = resize(&source, tw, th).unwrap().pixels;
            let rows = streamed(&source, tw, th);
            let diff = whole.iter().zip(&rows).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff < 1e-4, "{w}x{h} to {tw}x{th}: max difference {diff}");
        }
    }

    #[test]
    fn the_same_size_is_the_same_image() {
        let source = image(256, 256);
        assert_eq!(streamed(&source, 256, 256), source.pixels);
    }
}
