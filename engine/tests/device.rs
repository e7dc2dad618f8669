//! Device behaviour: batching, reads, the buffer pool and error reporting.

mod common;

use cmae_engine::kernels::elementwise;
use cmae_engine::{DType, Device, Tensor};
use common::dev;

#[test]
fn reads_see_all_recorded_work_in_order() {
    let d = dev();
    let x = Tensor::from_f32(d, &[1.0, 2.0, 3.0], &[3]).unwrap();
    // Overwrite a tensor after a kernel read it: the kernel must see the old data.
    let y = elementwise::scale(d, &x, 2.0).unwrap();
    d.write(&x, bytemuck::cast_slice(&[10.0f32, 20.0, 30.0])).unwrap();
    let z = elementwise::add(d, &x, &y).unwrap();
    assert_eq!(y.to_vec_f32(d).unwrap(), vec![2.0, 4.0, 6.0]);
    assert_eq!(z.to_vec_f32(d).unwrap(), vec![12.0, 24.0, 36.0]);
    let idx = Tensor::from_u32(d, &[7, 8], &[2]).unwrap();
    assert_eq!(idx.dtype(), DType::U32);
    assert_eq!(idx.to_vec_u32(d).unwrap(), vec![7, 8]);
}

#[test]
fn async_reads_complete_after_flush() {
    let d = dev();
    let x = elementwise::full(d, &[5], 1.5).unwrap();
    let mut pending = d.read_later(&x).unwrap();
    d.flush().unwrap();
    let bytes = loop {
        if let Some(b) = pending.try_take().unwrap() {
            break b;
        }
        std::thread::yield_now();
    };
    assert_eq!(bytemuck::cast_slice::<u8, f32>(&bytes), &[1.5; 5]);
}

#[test]
fn steady_state_steps_reuse_pooled_buffers() {
    // A private device so other tests' allocations do not interfere.
    let d = Device::from_env().unwrap();
    let step = |d: &Device| {
        let a = elementwise::full(d, &[1000], 1.0).unwrap();
        let b = elementwise::scale(d, &a, 3.0).unwrap();
        let c = elementwise::add(d, &a, &b).unwrap();
        d.sync().unwrap();
        c.to_vec_f32(d).unwrap()[0]
    };
    assert_eq!(step(&d), 4.0);
    let after_first = d.memory();
    for _ in 0..20 {
        assert_eq!(step(&d), 4.0);
    }
    assert_eq!(d.memory(), after_first, "no allocation growth in steady state");
    assert_eq!(after_first.in_use_bytes, 0, "every tensor went back to the pool");
}

#[test]
fn oversized_tensors_are_clear_errors() {
    let d = dev();
    let too_big = (d.limits().max_buffer_size / 4 + 1) as usize;
    let err = Tensor::uninit(d, &[too_big], DType::F32).unwrap_err().to_string();
    assert!(err.contains("exceeds") && err.contains("--batch"), "{err}");
}

#[test]
fn bad_backend_name_is_a_clear_error() {
    let req = cmae_engine::device::AdapterRequest { backend: None, name_contains: Some("no-such-gpu-anywhere".into()) };
    let err = Device::open(&req).err().expect("no adapter matches").to_string();
    assert!(err.contains("no-such-gpu-anywhere") && err.contains("available"), "{err}");
}

/// The viewer hands the engine eframe's device: wrapping an existing
/// wgpu device and queue gives a working engine device.
#[test]
fn wraps_an_existing_wgpu_device() {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    let inst = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(inst.request_adapter(&wgpu::RequestAdapterOptions::default())).unwrap();
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let d = Device::from_wgpu(device, queue, info);
    let x = Tensor::from_f32(&d, &[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let y = cmae_engine::kernels::matmul::matmul(&d, &x, &x, false, false).unwrap();
    assert_eq!(y.to_vec_f32(&d).unwrap(), vec![7.0, 10.0, 15.0, 22.0]);
}
