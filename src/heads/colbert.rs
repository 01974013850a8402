//! BGE-M3 late-interaction (ColBERT) scoring.

/// `colbert_score(q, p)` of FlagEmbedding: for each query vector its best dot product with any
/// passage vector, averaged over the query vectors. Rows are the unpadded vectors of one text
/// each, so (unlike `compute_score`'s padded batch, see the README) a padded zero row can never
/// win the max.
pub fn score(query: &[Vec<f32>], passage: &[Vec<f32>]) -> f32 {
    if query.is_empty() || passage.is_empty() {
        return 0.0;
    }
    let total: f64 = query
        .iter()
        .map(|q| {
            passage
                .iter()
                .map(|p| {
                    q.iter()
                        .zip(p)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                })
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .sum();
    (total / query.len() as f64) as f32
}

#[cfg(test)]
mod tests {
    #[test]
    fn mean_of_best_matches() {
        let q = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let p = vec![vec![0.5, 0.5], vec![-1.0, 0.2]];
        // Row 0: max(0.5, -1.0) = 0.5; row 1: max(0.5, 0.2) = 0.5.
        assert_eq!(super::score(&q, &p), 0.5);
        // A negative best match stays negative (no padding row at 0).
        assert_eq!(super::score(&[vec![1.0, 0.0]], &[vec![-0.5, 0.0]]), -0.5);
    }
}
