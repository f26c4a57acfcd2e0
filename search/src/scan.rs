//! The exact scan's own copy of the vectors: one signed byte per dimension, stored row after row
//! per attribute set, so that a filtered search that scores every matching vector streams them
//! from memory instead of looking each one up in the graph.
//!
//! Reading a vector back from usearch costs a hash lookup and a copy from a scattered address:
//! 0.5–2 µs per vector at 1M (bench/RESULTS.md). A row here costs one i8 dot product over
//! contiguous memory (SimSIMD picks the widest instructions the CPU has at run time). The scan
//! ranks by these codes, then rescores its best candidates from the graph's own vectors, so the
//! scores it returns are those an unfiltered search returns.
//!
//! Quantization: each vector is scaled so that its largest magnitude is 127, then rounded.
//! Cosine does not depend on the scale, so a row keeps only the length of its code vector. On
//! 384 dimensions the rounding moves a cosine by a few ten-thousandths (a unit test bounds it at
//! 0.003): the rescoring margin covers it many times over.

use simsimd::SpatialSimilarity;

/// Rows are kept in blocks of about this many bytes: a set's copy never holds more than one
/// partly filled block, where one growing `Vec` would hold up to twice its rows (the copy of 1M
/// vectors in 100 sets took 600 MiB that way instead of 370).
const BLOCK_BYTES: usize = 64 * 1024;

/// Vectors quantized to i8, `dims` bytes per row (set by the first row), and each row's length.
/// Every block but the last holds `rows_per_block` rows.
#[derive(Debug, Default)]
pub(crate) struct Codes {
    dims: usize,
    blocks: Vec<Vec<i8>>,
    norms: Vec<f32>,
}

impl Codes {
    fn rows_per_block(&self) -> usize {
        (BLOCK_BYTES / self.dims.max(1)).max(1)
    }

    /// Appends `vector`'s codes as the last row.
    pub(crate) fn push(&mut self, vector: &[f32]) {
        if self.norms.is_empty() {
            self.dims = vector.len();
        }
        let per_block = self.rows_per_block();
        if self.norms.len().is_multiple_of(per_block) {
            self.blocks.push(Vec::new());
        }
        let full = per_block * self.dims;
        let Some(block) = self.blocks.last_mut() else { return };
        if block.len() + vector.len() > block.capacity() {
            // Doubling, but never past a full block.
            let target = (block.capacity() * 2).clamp(block.len() + vector.len(), full.max(block.len() + vector.len()));
            block.reserve_exact(target - block.len());
        }
        let start = block.len();
        let scale = quantize_into(vector, block);
        let row = &block[start..];
        self.norms.push(if scale > 0.0 { dot(row, row).sqrt() } else { 0.0 });
    }

    /// Moves the last row into `pos` and drops the last row (as `Vec::swap_remove`).
    pub(crate) fn swap_remove(&mut self, pos: usize) {
        let Some(last) = self.norms.len().checked_sub(1) else { return };
        let (per_block, dims) = (self.rows_per_block(), self.dims);
        let (last_block, last_at) = (last / per_block, last % per_block * dims);
        if pos != last {
            let (block, at) = (pos / per_block, pos % per_block * dims);
            if block == last_block {
                self.blocks[block].copy_within(last_at..last_at + dims, at);
            } else {
                let (head, tail) = self.blocks.split_at_mut(last_block);
                head[block][at..at + dims].copy_from_slice(&tail[0][last_at..last_at + dims]);
            }
        }
        self.blocks[last_block].truncate(last_at);
        if last_at == 0 {
            self.blocks.pop();
        }
        self.norms.swap_remove(pos);
    }

    /// Calls `f(row, cosine)` with each row's approximate cosine to the quantized query `q`, in
    /// row order. (Plain loops per block: an iterator chain over the blocks cost a third more.)
    pub(crate) fn for_each_cosine(&self, q: &Query, mut f: impl FnMut(usize, f32)) {
        let dims = q.codes.len().max(1);
        let per_block = self.rows_per_block();
        for (b, block) in self.blocks.iter().enumerate() {
            let first = b * per_block;
            for (i, (row, &norm)) in block.chunks_exact(dims).zip(&self.norms[first..]).enumerate() {
                let denominator = q.norm * norm;
                f(first + i, if denominator > 0.0 { dot(&q.codes, row) / denominator } else { 0.0 });
            }
        }
    }

    /// Rows held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.norms.len()
    }

    /// The codes of row `pos`.
    #[cfg(test)]
    pub(crate) fn row(&self, pos: usize) -> &[i8] {
        let per_block = self.rows_per_block();
        let at = pos % per_block * self.dims;
        &self.blocks[pos / per_block][at..at + self.dims]
    }

    /// Bytes reserved.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.blocks.iter().map(Vec::capacity).sum::<usize>()
            + self.blocks.capacity() * std::mem::size_of::<Vec<i8>>()
            + self.norms.capacity() * 4
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

    /// Every row's approximate cosine to `q`, checking that rows come in order.
    fn cosines(codes: &Codes, q: &[f32]) -> Vec<f32> {
        let mut all = Vec::new();
        codes.for_each_cosine(&Query::new(q), |row, c| {
            assert_eq!(row, all.len());
            all.push(c);
        });
        all
    }

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
        codes.for_each_cosine(&quantized, |row, approx| worst = worst.max((approx - cosine(&q, &vectors[row])).abs()));
        assert!(worst < 0.003, "largest error {worst}");
        assert!(worst > 0.0, "the codes are not exact, so some error must show");
    }

    #[test]
    fn swap_remove_moves_the_last_row() {
        let mut codes = Codes::default();
        for v in [[1.0, 0.0], [0.0, -2.0], [0.5, 0.5]] {
            codes.push(&v);
        }
        assert_eq!(codes.row(1), &[0, -127]);
        codes.swap_remove(0);
        assert_eq!(codes.len(), 2);
        assert_eq!(codes.row(0), &[127, 127]);
        assert_eq!(codes.row(1), &[0, -127]);
        codes.swap_remove(1);
        assert_eq!(codes.len(), 1);
        assert_eq!(codes.row(0), &[127, 127]);
        let c = cosines(&codes, &[1.0, 1.0]);
        assert_eq!(c.len(), 1);
        assert!((c[0] - 1.0).abs() < 1e-6);
    }

    /// Rows wide enough that a block holds two: pushes and removals across block boundaries
    /// against a plain list of rows, and the memory held stays within one block of the rows.
    #[test]
    fn blocks_follow_pushes_and_removals() {
        let dims = BLOCK_BYTES / 2;
        let mut rng = StdRng::seed_from_u64(3);
        let mut codes = Codes::default();
        let mut model: Vec<Vec<i8>> = Vec::new();
        for _ in 0..400 {
            if model.is_empty() || rng.random_bool(0.55) {
                let mut v = vec![0f32; dims];
                for x in v.iter_mut().take(8) {
                    *x = rng.random_range(-1.0f32..1.0);
                }
                let mut one = Codes::default();
                one.push(&v);
                model.push(one.row(0).to_vec());
                codes.push(&v);
            } else {
                let pos = rng.random_range(0..model.len());
                model.swap_remove(pos);
                codes.swap_remove(pos);
            }
            assert_eq!(codes.len(), model.len());
            assert_eq!(codes.blocks.len(), model.len().div_ceil(2));
            for (pos, row) in model.iter().enumerate() {
                assert_eq!(codes.row(pos), &row[..], "row {pos}");
            }
            let rows_bytes = model.len() * dims;
            assert!(codes.blocks.iter().map(Vec::capacity).sum::<usize>() <= rows_bytes + BLOCK_BYTES);
        }
    }

    #[test]
    fn zero_and_non_finite_vectors_score_zero() {
        let mut codes = Codes::default();
        codes.push(&[0.0, 0.0]);
        codes.push(&[f32::NAN, 1.0]);
        codes.push(&[f32::INFINITY, 1.0]);
        codes.push(&[3.0, 4.0]);
        let c = cosines(&codes, &[3.0, 4.0]);
        assert_eq!(&c[..3], &[0.0, 0.0, 0.0]);
        assert!((c[3] - 1.0).abs() < 1e-6);
        assert_eq!(cosines(&codes, &[0.0, 0.0]), vec![0.0; 4]);
    }
}
