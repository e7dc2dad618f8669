//! Fixed 2-D sin-cos position embeddings (MAE's `get_2d_sincos_pos_embed`).

/// `[1 + g², dim]` row-major, row 0 (cls) zero. Of each row, the first dim/2
/// values encode the patch column and the last dim/2 the row; each half is
/// `[sin(pos·ω_k)]_k ++ [cos(pos·ω_k)]_k` with `ω_k = 10000^(−k/(dim/4))`.
pub fn sincos_2d(dim: usize, grid: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64)).collect();
    let mut out = vec![0.0f32; (1 + grid * grid) * dim];
    for row in 0..grid {
        for col in 0..grid {
            let base = (1 + row * grid + col) * dim;
            for (half, pos) in [(0, col), (1, row)] {
                for (k, w) in omega.iter().enumerate() {
                    let a = pos as f64 * w;
                    out[base + half * dim / 2 + k] = a.sin() as f32;
                    out[base + half * dim / 2 + quarter + k] = a.cos() as f32;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sincos_2d;

    #[test]
    fn layout_matches_mae() {
        let (dim, g) = (8, 3);
        let t = sincos_2d(dim, g);
        assert!(t[..dim].iter().all(|&v| v == 0.0), "cls row is zero");
        // Patch (row 1, col 2) = index 1·3 + 2 = 5 → table row 6.
        let r = &t[6 * dim..7 * dim];
        let (w0, w1) = (1.0f64, 1.0f64 / 100.0);
        let want = [
            (2.0 * w0).sin(),
            (2.0 * w1).sin(),
            (2.0 * w0).cos(),
            (2.0 * w1).cos(),
            w0.sin(),
            w1.sin(),
            w0.cos(),
            w1.cos(),
        ];
        for (got, want) in r.iter().zip(want) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{r:?}");
        }
    }
}
