//! What the engine's recording adds over raw wgpu for small dispatches
//! (`cmae bench kernels --only dispatch`).

use std::time::Instant;

use anyhow::Result;
use cmae_engine::Device;
use cmae_engine::kernels::elementwise;
use cmae_engine::shaders;

/// Wall time of `n` tiny dispatches through the engine (a new pooled output,
/// a bind group and a parameter block each) and of the same dispatches raw:
/// one pre-built bind group recorded `n` times into one pass. Both include
/// the submit and the wait.
#[derive(Debug, Clone, Copy)]
pub struct DispatchOverhead {
    pub engine_ms: f64,
    pub raw_ms: f64,
}

pub fn measure(dev: &Device, n: usize) -> Result<DispatchOverhead> {
    const ELEMS: u32 = 64;
    let engine = || -> Result<f64> {
        let start = Instant::now();
        for i in 0..n {
            elementwise::full(dev, &[ELEMS as usize], i as f32)?;
        }
        dev.sync()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };

    let (device, queue) = (dev.wgpu_device(), dev.wgpu_queue());
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("overhead"),
        source: wgpu::ShaderSource::Wgsl(shaders::ELEMENTWISE.source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("overhead fill"),
        layout: None,
        module: &module,
        entry_point: Some("fill"),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    });
    let buffer = |usage, size| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("overhead"),
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let params = buffer(wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST, 16);
    let out = buffer(wgpu::BufferUsages::STORAGE, u64::from(ELEMS) * 4);
    // The fill kernel's parameters: n, period, alpha (the value), beta.
    let words: [u32; 4] = [ELEMS, 1, 1.0f32.to_bits(), 0];
    queue.write_buffer(&params, 0, bytemuck::cast_slice(&words));
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("overhead"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 3, resource: out.as_entire_binding() },
        ],
    });
    let raw = || -> Result<f64> {
        let start = Instant::now();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipeline);
            for _ in 0..n {
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(1, 1, 1);
            }
        }
        queue.submit([encoder.finish()]);
        device.poll(wgpu::PollType::wait_indefinitely())?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };

    engine()?;
    raw()?;
    let mut engine_runs = Vec::new();
    let mut raw_runs = Vec::new();
    for _ in 0..5 {
        engine_runs.push(engine()?);
        raw_runs.push(raw()?);
    }
    Ok(DispatchOverhead { engine_ms: median(&mut engine_runs), raw_ms: median(&mut raw_runs) })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
