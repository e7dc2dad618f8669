//! Buffer pool: storage buffers reused by size class.
//!
//! A training step allocates the same set of tensor sizes every time, so after
//! the first step every request is served from the free lists and the step
//! allocates nothing. Size classes are an eighth of an octave apart, which
//! bounds the waste at 12.5% while letting nearby sizes share buffers.
//!
//! Each stream has its own free lists. A buffer may be handed out again while
//! commands of that stream that used it are still recorded and not yet
//! submitted: that is safe because the stream submits in recording order on
//! one queue and wgpu puts barriers between the uses.

use std::collections::HashMap;

use super::Context;

/// The rounded size a request of `bytes` is served with.
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(16);
    let octave = 1u64 << bytes.ilog2();
    let step = (octave / 8).max(16);
    bytes.div_ceil(step) * step
}

/// One stream's free lists. Byte counts live in the context, summed over streams.
#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
}

impl Pool {
    /// A buffer of at least `bytes`, reused when one of its class is free.
    pub fn take(&mut self, ctx: &Context, bytes: u64) -> wgpu::Buffer {
        let class = size_class(bytes);
        ctx.count_in_use(class as i64);
        if let Some(buf) = self.free.get_mut(&class).and_then(Vec::pop) {
            ctx.count_pooled(-(class as i64));
            return buf;
        }
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("cmae tensor"),
            size: class,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    pub fn give_back(&mut self, ctx: &Context, buf: wgpu::Buffer) {
        let class = buf.size() as i64;
        ctx.count_in_use(-class);
        ctx.count_pooled(class);
        self.free.entry(buf.size()).or_default().push(buf);
    }

    /// Frees every pooled buffer (e.g. between runs with different shapes).
    pub fn trim(&mut self, ctx: &Context) {
        for buf in self.free.drain().flat_map(|(_, v)| v) {
            ctx.count_pooled(-(buf.size() as i64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn classes_cover_the_request_and_waste_at_most_an_eighth() {
        for bytes in [1u64, 4, 15, 16, 17, 100, 255, 256, 257, 1000, 4097, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes && c.is_multiple_of(16), "{bytes} -> {c}");
            if bytes >= 128 {
                assert!(c as f64 <= bytes as f64 * 1.125 + 16.0, "{bytes} -> {c}");
            }
        }
        assert_eq!(size_class(1000), size_class(1010));
    }
}
