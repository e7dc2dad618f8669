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

/// PyTorch's bicubic kernel (a = −0.75).
fn cubic(x: f64) -> f64 {
    let (a, x) = (-0.75, x.abs());
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// MAE's `interpolate_pos_embed`: the patch rows of a `[1 + g², dim]` table
/// resized bicubically to `new_grid`² (F.interpolate, align_corners=False,
/// edges clamped), the cls row kept.
pub fn interpolate(table: &[f32], dim: usize, new_grid: usize) -> anyhow::Result<Vec<f32>> {
    let rows = table.len() / dim.max(1);
    let old = ((rows.saturating_sub(1)) as f64).sqrt().round() as usize;
    if dim == 0 || old * old + 1 != rows || table.len() != rows * dim {
        anyhow::bail!("position embeddings of {} values are not [1 + g², {dim}]", table.len());
    }
    let mut out = vec![0.0f32; (1 + new_grid * new_grid) * dim];
    out[..dim].copy_from_slice(&table[..dim]);
    let scale = old as f64 / new_grid as f64;
    let at = |y: isize, x: isize, c: usize| -> f64 {
        let (y, x) = (y.clamp(0, old as isize - 1) as usize, x.clamp(0, old as isize - 1) as usize);
        f64::from(table[(1 + y * old + x) * dim + c])
    };
    for oy in 0..new_grid {
        let sy = (oy as f64 + 0.5) * scale - 0.5;
        let (y0, ty) = (sy.floor() as isize, sy - sy.floor());
        for ox in 0..new_grid {
            let sx = (ox as f64 + 0.5) * scale - 0.5;
            let (x0, tx) = (sx.floor() as isize, sx - sx.floor());
            for c in 0..dim {
                let mut v = 0.0;
                for (dy, wy) in (-1..=2).map(|d| (d, cubic(ty - d as f64))) {
                    for (dx, wx) in (-1..=2).map(|d| (d, cubic(tx - d as f64))) {
                        v += wy * wx * at(y0 + dy, x0 + dx, c);
                    }
                }
                out[(1 + oy * new_grid + ox) * dim + c] = v as f32;
            }
        }
    }
    Ok(out)
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

    #[test]
    fn interpolation_keeps_same_size_and_constant_tables() {
        let t = sincos_2d(8, 4);
        let same = super::interpolate(&t, 8, 4).unwrap();
        for (a, b) in same.iter().zip(&t) {
            assert!((a - b).abs() < 1e-6);
        }
        // A constant field stays constant at any size (the cubic weights sum to 1).
        let flat: Vec<f32> = (0..17 * 3).map(|i| if i < 3 { 9.0 } else { 0.5 }).collect();
        let up = super::interpolate(&flat, 3, 7).unwrap();
        assert_eq!(up.len(), 50 * 3);
        assert!(up[..3].iter().all(|&v| v == 9.0) && up[3..].iter().all(|&v| (v - 0.5).abs() < 1e-6));
        assert!(super::interpolate(&flat[..10], 3, 7).is_err());
    }
}
