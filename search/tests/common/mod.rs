//! What the vector-index suites share.

use rand::Rng;
use rand::rngs::StdRng;
use uuid::Uuid;

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

/// The id of the `i`-th vector of a suite's data.
pub fn id(i: usize) -> Uuid {
    Uuid::from_u128(i as u128 + 1)
}

/// The ids of the `k` vectors of `data` nearest `q` (by dot product) among those `keep` lets
/// through: the ground truth the index is checked against.
pub fn brute_force(data: &[Vec<f32>], q: &[f32], k: usize, keep: impl Fn(usize) -> bool) -> Vec<Uuid> {
    let mut scored: Vec<(f32, usize)> = data
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), i))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(k).map(|(_, i)| id(i)).collect()
}
