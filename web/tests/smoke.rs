//! The browser smoke, natively: the same code on this machine's adapter.

#[test]
fn the_smoke_product_matches_f64_on_the_native_adapter() {
    let report = pollster::block_on(async { cmae_web::smoke(&cmae_web::open().await?).await }).unwrap();
    let error = report["matmul_max_error"].as_f64().unwrap();
    assert!(error < 1e-6, "{report}");
    assert!(!report["adapter"].as_str().unwrap().is_empty());
}
