//! Device behaviour: batching, reads, the buffer pool and error reporting.

mod common;

use cmae_engine::kernels::elementwise;
use cmae_engine::kernels::optim::{AdamWStep, adamw};
use cmae_engine::{DType, Device, Tape, Tensor, TensorMut, TuneConfig};
use common::dev;

#[test]
fn reads_see_all_recorded_work_in_order() {
    let d = dev();
    let mut x = TensorMut::from_f32(d, &[1.0, 2.0, 3.0], &[3]).unwrap();
    // Overwrite a tensor after a kernel read it: the kernel must see the old data.
    let y = elementwise::scale(d, &x, 2.0).unwrap();
    x.write(d, bytemuck::cast_slice(&[10.0f32, 20.0, 30.0])).unwrap();
    let z = elementwise::add(d, &x, &y).unwrap();
    assert_eq!(y.wait_f32(d).unwrap(), vec![2.0, 4.0, 6.0]);
    assert_eq!(z.wait_f32(d).unwrap(), vec![12.0, 24.0, 36.0]);
    let idx = Tensor::from_u32(d, &[7, 8], &[2]).unwrap();
    assert_eq!(idx.dtype(), DType::U32);
    assert_eq!(idx.wait_u32(d).unwrap(), vec![7, 8]);
}

#[test]
fn async_reads_complete_after_flush() {
    let d = dev();
    let x = elementwise::full(d, &[5], 1.5).unwrap();
    let mut pending = x.read_f32(d).unwrap();
    d.flush().unwrap();
    let values = loop {
        if let Some(v) = pending.try_take().unwrap() {
            break v;
        }
        std::thread::yield_now();
    };
    assert_eq!(values, [1.5; 5]);
    // The same read as a future.
    assert_eq!(pollster::block_on(x.read_f32(d).unwrap()).unwrap(), [1.5; 5]);
    let err = x.read_u32(d).unwrap_err().to_string();
    assert!(err.contains("F32"), "{err}");
}

/// A stream's sync submits only its own batch: another thread's
/// half-recorded work stays unsubmitted until that thread flushes it.
#[test]
fn streams_record_and_submit_independently() {
    let a = Device::from_env().unwrap();
    let b = a.new_stream();
    let on_a = elementwise::full(&a, &[4], 2.0).unwrap();
    let mut pending_a = on_a.read_f32(&a).unwrap();
    let on_b = elementwise::full(&b, &[4], 3.0).unwrap();
    assert_eq!(on_b.wait_f32(&b).unwrap(), [3.0; 4]);
    b.sync().unwrap();
    assert_eq!(pending_a.try_take().unwrap(), None, "b's sync must not submit a's batch");
    a.flush().unwrap();
    assert_eq!(pending_a.wait().unwrap(), [2.0; 4]);
}

/// A tensor made on one stream and used on another: the user's batch is
/// ordered after the maker's writes, and the maker's pool cannot hand the
/// buffer out again before the user's batch is submitted.
#[test]
fn tensors_cross_streams_safely() {
    let a = Device::from_env().unwrap();
    let b = a.new_stream();
    let x = Tensor::from_f32(&a, &[1.0, 2.0, 3.0, 4.0], &[4]).unwrap();
    let doubled = elementwise::scale(&b, &x, 2.0).unwrap();
    drop(x);
    // Same size class as x: would reuse x's buffer if b's batch did not hold it.
    let other = Tensor::from_f32(&a, &[9.0; 4], &[4]).unwrap();
    a.sync().unwrap();
    assert_eq!(doubled.wait_f32(&b).unwrap(), [2.0, 4.0, 6.0, 8.0]);
    assert_eq!(other.wait_f32(&a).unwrap(), [9.0; 4]);
}

/// Writing into storage another handle reads is refused, naming the shapes.
#[test]
fn writes_into_shared_storage_are_errors() {
    let d = dev();
    let mut param = TensorMut::from_f32(d, &[1.0, 2.0], &[2]).unwrap();
    let grad = Tensor::from_f32(d, &[0.5, 0.5], &[2]).unwrap();
    let (mut m, mut v) = (elementwise::zeros(d, &[2]).unwrap(), elementwise::zeros(d, &[2]).unwrap());
    let step = AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1, grad_scale: 1.0 };

    // The tape keeps the parameter for backward: updating it now is an error.
    let tape = Tape::new(d);
    let p = tape.param("p", &param);
    let y = tape.mean(&tape.mul(&p, &p).unwrap()).unwrap();
    let err = adamw(d, &mut param, &grad, &mut m, &mut v, step).unwrap_err().to_string();
    assert!(err.contains("adamw") && err.contains("[2]") && err.contains("tape"), "{err}");
    drop((y, p, tape));
    adamw(d, &mut param, &grad, &mut m, &mut v, step).unwrap();
    assert!(param.wait_f32(d).unwrap()[0] < 1.0, "the update ran once the tape was gone");

    // A view shares the storage too, and a shared tensor cannot become mutable.
    let view = param.as_tensor().reshape(&[1, 2]).unwrap();
    let err = param.write(d, bytemuck::cast_slice(&[0.0f32; 2])).unwrap_err().to_string();
    assert!(err.contains("write") && err.contains("other handles"), "{err}");
    let err = view.clone().into_mut().unwrap_err().to_string();
    assert!(err.contains("other handles"), "{err}");
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
        c.wait_f32(d).unwrap()[0]
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
    let err = TensorMut::uninit(d, &[too_big], DType::F32).unwrap_err().to_string();
    assert!(err.contains("exceeds") && err.contains("--batch"), "{err}");
}

#[test]
fn bad_backend_name_is_a_clear_error() {
    let req = cmae_engine::device::AdapterRequest {
        name_contains: Some("no-such-gpu-anywhere".into()),
        ..Default::default()
    };
    let err = Device::open(&req, TuneConfig::off()).err().expect("no adapter matches").to_string();
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
    let d = Device::from_wgpu(device, queue, info, TuneConfig::off());
    let x = Tensor::from_f32(&d, &[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let y = cmae_engine::kernels::matmul::matmul(&d, &x, &x, false, false).unwrap();
    assert_eq!(y.wait_f32(&d).unwrap(), vec![7.0, 10.0, 15.0, 22.0]);
}

/// A kernel whose needs the adapter lacks is refused with an error naming
/// the missing feature and the adapter, not a wgpu validation failure. GL
/// (llvmpipe here) has neither subgroups nor f16 in wgpu; CI requires it.
#[test]
fn kernels_the_adapter_cannot_run_are_refused_by_name() {
    use cmae_engine::device::AdapterRequest;
    use cmae_engine::kernels::{cast, matmul};
    let request = AdapterRequest { backend: Some(wgpu::Backends::GL), ..Default::default() };
    let gl = match Device::open(&request, TuneConfig::off()) {
        Ok(gl) => gl,
        Err(e) => {
            assert!(std::env::var_os("CMAE_REQUIRE_GL").is_none(), "CMAE_REQUIRE_GL is set but: {e}");
            eprintln!("NOT RUN: no GL adapter: {e}");
            return;
        }
    };
    let families = gl.kernel_families();
    assert!(!families.subgroups_of_8 && !families.shader_f16, "{families:?}");
    let x = Tensor::from_f32(&gl, &[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let e = cast::to_f16(&gl, &x).unwrap_err().to_string();
    assert!(e.contains("SHADER_F16") && e.contains(&gl.info().name) && e.contains("cast.wgsl"), "{e}");
    gl.set_matmul_kind(cmae_engine::MatmulKind::Subgroup);
    let e = matmul::matmul(&gl, &x, &x, false, false).unwrap_err().to_string();
    assert!(e.contains("8-lane subgroups") && e.contains("matmul_subgroup.wgsl"), "{e}");
}

/// A profile counts, per kernel label, the bytes its dispatches bound
/// read-only and writable (a tensor bound twice once), besides their number
/// and time.
#[test]
fn a_profile_counts_the_bytes_each_kernel_binds() {
    let d = Device::from_env().unwrap();
    let a = Tensor::from_f32(&d, &vec![1.0; 1000], &[1000]).unwrap();
    let b = Tensor::from_f32(&d, &vec![2.0; 1000], &[1000]).unwrap();
    d.set_profiling(true).unwrap();
    let c = elementwise::add(&d, &a, &b).unwrap();
    let e = elementwise::add(&d, &c, &a).unwrap();
    let twice = elementwise::add(&d, &a, &a).unwrap();
    let profile = d.take_profile().unwrap();
    d.set_profiling(false).unwrap();
    assert_eq!(e.wait_f32(&d).unwrap(), vec![4.0; 1000]);
    assert_eq!(twice.wait_f32(&d).unwrap(), vec![2.0; 1000]);
    let adds: Vec<_> = profile.iter().filter(|k| k.dispatches > 0 && k.bytes_written > 0).collect();
    assert_eq!(adds.len(), 1, "{profile:?}");
    let k = adds[0];
    assert_eq!((k.dispatches, k.bytes_read, k.bytes_written), (3, 8000 + 8000 + 4000, 3 * 4000), "{profile:?}");
    assert!(k.total_ms > 0.0, "{profile:?}");
}
