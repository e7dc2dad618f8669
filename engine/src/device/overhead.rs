//! Measures what the engine's recording adds over raw wgpu for small dispatches.

use std::time::Instant;

use super::{Device, KernelSpec};
use crate::error::Result;
use crate::kernels::elementwise;
use crate::shaders;
use crate::tensor::Tensor;

/// Wall time of `n` tiny dispatches through the engine (a new pooled output,
/// a bind group and a parameter block each) and of the same dispatches raw:
/// one pre-built bind group recorded `n` times into one pass. Both include
/// the submit and the wait.
#[derive(Debug, Clone, Copy)]
pub struct DispatchOverhead {
    pub engine_ms: f64,
    pub raw_ms: f64,
}

impl Device {
    pub fn measure_dispatch_overhead(&self, n: usize) -> Result<DispatchOverhead> {
        const ELEMS: usize = 64;
        let engine = || -> Result<f64> {
            let start = Instant::now();
            for i in 0..n {
                elementwise::full(self, &[ELEMS], i as f32)?;
            }
            self.sync()?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        };

        let spec = KernelSpec { shader: &shaders::ELEMENTWISE, entry: "fill", constants: &[], label: "fill" };
        let pipeline = self.pipeline(&spec)?;
        let out = Tensor::uninit(self, &[ELEMS], crate::tensor::DType::F32)?;
        let params = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("overhead params"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let words: [u32; 4] = [ELEMS as u32, 1, 1.0f32.to_bits(), 0];
        self.inner.queue.write_buffer(&params, 0, bytemuck::cast_slice(&words));
        let bind_group = self.inner.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("overhead"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: out.buffer().as_entire_binding() },
            ],
        });
        let raw = || -> Result<f64> {
            let start = Instant::now();
            let mut encoder = self.inner.device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                pass.set_pipeline(&pipeline);
                for _ in 0..n {
                    pass.set_bind_group(0, &bind_group, &[]);
                    pass.dispatch_workgroups(1, 1, 1);
                }
            }
            self.inner.queue.submit([encoder.finish()]);
            self.wait_idle()?;
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
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
