//! What the vector-index suites share.

use rand::Rng;
use rand::rngs::StdRng;

/// The vectors' length in these suites.
pub const DIM: usize = 32;

/// `n` random unit vectors of `DIM` dimensions.
pub fn random_vectors(rng: &mut StdRng, n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect()
}
