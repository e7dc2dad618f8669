//! MAE's per-iteration learning-rate schedule: linear warmup, then a
//! half-cosine to 0.

/// Total optimizer steps and warmup steps of a run of `epochs` (or `steps`)
/// over `batches_per_epoch` micro-batches.
pub fn schedule_steps(
    epochs: f64,
    steps: Option<usize>,
    warmup_epochs: f64,
    accum: usize,
    batches_per_epoch: u64,
) -> (u64, f64) {
    let per_epoch = batches_per_epoch as f64 / accum as f64;
    let total = steps.map_or_else(|| (epochs * per_epoch).ceil().max(1.0) as u64, |s| s as u64);
    let warmup = total as f64 * (warmup_epochs / epochs).min(1.0);
    (total, warmup)
}

/// Learning rate of optimizer step `step` (0-based) out of `total`, with
/// `warmup` warmup steps, peak `peak` and a cosine floor `min`.
pub fn lr_at(step: u64, total: u64, warmup: f64, peak: f64, min: f64) -> f64 {
    let s = step as f64;
    if s < warmup {
        return peak * s / warmup;
    }
    let span = (total as f64 - warmup).max(1.0);
    let progress = ((s - warmup) / span).min(1.0);
    min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::lr_at;

    #[test]
    fn warms_up_linearly_then_decays_as_a_half_cosine() {
        let (total, warm, peak) = (100, 10.0, 2.0);
        assert_eq!(lr_at(0, total, warm, peak, 0.0), 0.0);
        assert!((lr_at(5, total, warm, peak, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, total, warm, peak, 0.0) - 2.0).abs() < 1e-12);
        assert!((lr_at(55, total, warm, peak, 0.0) - 1.0).abs() < 1e-12, "half-way through the cosine");
        assert!(lr_at(99, total, warm, peak, 0.0) < 0.01);
        assert!(lr_at(0, 10, 0.0, 1.0, 0.0) == 1.0, "no warmup starts at the peak");
        assert!((lr_at(100, 100, 10.0, 2.0, 1e-6) - 1e-6).abs() < 1e-12, "the cosine ends at its floor");
    }
}
