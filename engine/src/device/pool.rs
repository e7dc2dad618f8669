//! Buffer pool: storage buffers reused by size class.
//!
//! A training step allocates the same set of tensor sizes every time, so after
//! the first step every request is served from the free lists and the step
//! allocates nothing. Size classes are an eighth of an octave apart, which
//! bounds the waste at 12.5% while letting nearby sizes share buffers.
//!
//! A buffer may be handed out again while commands that used it are still
//! recorded and not yet submitted: that is safe because all work runs in
//! submission order on one queue and wgpu puts barriers between the uses.

use std::collections::HashMap;

/// The rounded size a request of `bytes` is served with.
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(16);
    let octave = 1u64 << bytes.ilog2();
    let step = (octave / 8).max(16);
    bytes.div_ceil(step) * step
}

#[derive(Default)]
pub struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    /// Bytes of buffers handed out and not yet returned.
    pub in_use: u64,
    /// Bytes of buffers waiting in the free lists.
    pub pooled: u64,
}

impl Pool {
    /// A buffer of at least `bytes`, reused when one of its class is free.
    pub fn take(&mut self, device: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
        let class = size_class(bytes);
        self.in_use += class;
        if let Some(buf) = self.free.get_mut(&class).and_then(Vec::pop) {
            self.pooled -= class;
            return buf;
        }
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("cmae tensor"),
            size: class,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    pub fn give_back(&mut self, buf: wgpu::Buffer) {
        let class = buf.size();
        self.in_use -= class;
        self.pooled += class;
        self.free.entry(class).or_default().push(buf);
    }

    /// Frees every pooled buffer (e.g. between runs with different shapes).
    pub fn trim(&mut self) {
        self.free.clear();
        self.pooled = 0;
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
