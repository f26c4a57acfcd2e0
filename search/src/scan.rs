//! The exact scan's own copy of the vectors: one signed byte per dimension, stored row after row
//! per attribute set, so that a filtered search that scores every matching vector streams them
//! from memory instead of looking each one up in the graph.
//!
//! Reading a vector back from usearch costs a hash lookup and a copy from a scattered address:
//! about 2 µs per vector at 1M (bench/RESULTS.md). A row here costs one i8 dot product over
//! contiguous memory (SimSIMD picks the widest instructions the CPU has at run time). The scan
//! ranks by these codes, then rescores its best candidates from the graph's own vectors, so the
//! scores it returns are those an unfiltered search returns.
//!
//! Quantization: each vector is scaled so that its largest magnitude is 127, then rounded.
//! Cosine does not depend on the scale, so a row keeps only the length of its code vector. On
//! 384 dimensions the rounding moves a cosine by about 0.0005, far less than the gaps the
//! rescoring margin covers.

use simsimd::SpatialSimilarity;

/// Vectors quantized to i8, `dims` bytes per row, and each row's length.
#[derive(Debug, Default)]
pub(crate) struct Codes {
    bytes: Vec<i8>,
    norms: Vec<f32>,
}

impl Codes {
    /// Appends `vector`'s codes as the last row.
    pub(crate) fn push(&mut self, vector: &[f32]) {
        let start = self.bytes.len();
        let scale = quantize_into(vector, &mut self.bytes);
        let row = &self.bytes[start..];
        self.norms.push(if scale > 0.0 { dot(row, row).sqrt() } else { 0.0 });
    }

    /// Moves the last row into `pos` and drops the last row (as `Vec::swap_remove`).
    pub(crate) fn swap_remove(&mut self, pos: usize) {
        let Some(last) = self.norms.len().checked_sub(1) else { return };
        let dims = self.bytes.len() / self.norms.len();
        if pos != last {
            self.bytes.copy_within(last * dims..(last + 1) * dims, pos * dims);
        }
        self.bytes.truncate(last * dims);
        self.norms.swap_remove(pos);
    }

    /// Each row's approximate cosine to the quantized query `q`, in row order.
    pub(crate) fn cosines<'a>(&'a self, q: &'a Query) -> impl Iterator<Item = f32> + 'a {
        self.bytes.chunks_exact(q.codes.len().max(1)).zip(&self.norms).map(|(row, &norm)| {
            let denominator = q.norm * norm;
            if denominator > 0.0 { dot(&q.codes, row) / denominator } else { 0.0 }
        })
    }

    /// Rows held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.norms.len()
    }

    /// The codes of row `pos`.
    #[cfg(test)]
    pub(crate) fn row(&self, pos: usize, dims: usize) -> &[i8] {
        &self.bytes[pos * dims..(pos + 1) * dims]
    }

    /// Bytes reserved.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.bytes.capacity() + self.norms.capacity() * 4
    }
}

/// A query quantized like the rows.
#[derive(Debug)]
pub(crate) struct Query {
    codes: Vec<i8>,
    norm: f32,
}

impl Query {
    pub(crate) fn new(vector: &[f32]) -> Self {
        let mut codes = Vec::with_capacity(vector.len());
        let scale = quantize_into(vector, &mut codes);
        let norm = if scale > 0.0 { dot(&codes, &codes).sqrt() } else { 0.0 };
        Self { codes, norm }
    }
}

/// Appends `vector` scaled to ±127 and rounded; returns the scale (0 for a zero vector or one
/// with a non-finite component, whose codes are then all 0: it scores 0 against every query).
fn quantize_into(vector: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = vector.iter().fold(0f32, |m, x| m.max(x.abs()));
    let finite = vector.iter().all(|x| x.is_finite());
    let scale = if max > 0.0 && finite { 127.0 / max } else { 0.0 };
    out.extend(vector.iter().map(|x| (x * scale).round() as i8));
    scale
}

/// The dot product of two rows of equal length (SimSIMD; exact in f64 for rows this short).
fn dot(a: &[i8], b: &[i8]) -> f32 {
    i8::dot(a, b).unwrap_or(0.0) as f32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        d / (n(a) * n(b))
    }

    #[test]
    fn quantized_cosines_stay_close_to_the_exact_ones() {
        let mut rng = StdRng::seed_from_u64(7);
        let dims = 384;
        let vectors: Vec<Vec<f32>> =
            (0..200).map(|_| (0..dims).map(|_| rng.random_range(-1.0f32..1.0)).collect()).collect();
        let mut codes = Codes::default();
        for v in &vectors {
            codes.push(v);
        }
        assert_eq!(codes.len(), 200);
        let q: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let quantized = Query::new(&q);
        let mut worst = 0f32;
        for (v, approx) in vectors.iter().zip(codes.cosines(&quantized)) {
            worst = worst.max((approx - cosine(&q, v)).abs());
        }
        assert!(worst < 0.003, "largest error {worst}");
        assert!(worst > 0.0, "the codes are not exact, so some error must show");
    }

    #[test]
    fn swap_remove_moves_the_last_row() {
        let mut codes = Codes::default();
        for v in [[1.0, 0.0], [0.0, -2.0], [0.5, 0.5]] {
            codes.push(&v);
        }
        assert_eq!(codes.row(1, 2), &[0, -127]);
        codes.swap_remove(0);
        assert_eq!(codes.len(), 2);
        assert_eq!(codes.row(0, 2), &[127, 127]);
        assert_eq!(codes.row(1, 2), &[0, -127]);
        codes.swap_remove(1);
        assert_eq!(codes.len(), 1);
        assert_eq!(codes.row(0, 2), &[127, 127]);
        let q = Query::new(&[1.0, 1.0]);
        let c: Vec<f32> = codes.cosines(&q).collect();
        assert!((c[0] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn zero_and_non_finite_vectors_score_zero() {
        let mut codes = Codes::default();
        codes.push(&[0.0, 0.0]);
        codes.push(&[f32::NAN, 1.0]);
        codes.push(&[f32::INFINITY, 1.0]);
        codes.push(&[3.0, 4.0]);
        let c: Vec<f32> = codes.cosines(&Query::new(&[3.0, 4.0])).collect();
        assert_eq!(&c[..3], &[0.0, 0.0, 0.0]);
        assert!((c[3] - 1.0).abs() < 1e-6);
        assert!(codes.cosines(&Query::new(&[0.0, 0.0])).all(|c| c == 0.0));
    }
}
