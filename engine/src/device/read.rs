//! Typed reads of GPU tensors: a future (`.await`, for wasm and async callers)
//! with a blocking `wait` for native code. Callers get `Vec<f32>` or
//! `Vec<u32>`; nobody outside the engine decodes bytes.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use super::{Device, lock};
use crate::error::{Error, Result};

pub(crate) enum MapState {
    Recorded,
    Submitted,
    Mapped,
    Failed(String),
}

pub(crate) struct ReadSlot {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) len: u64,
    pub(crate) state: Mutex<MapState>,
    waker: Mutex<Option<Waker>>,
}

impl ReadSlot {
    pub(crate) fn new(buffer: wgpu::Buffer, len: u64) -> Self {
        Self { buffer, len, state: Mutex::new(MapState::Recorded), waker: Mutex::default() }
    }

    /// The map callback: records the outcome and wakes an awaiting task.
    pub(crate) fn mapped(&self, result: std::result::Result<(), String>) {
        *lock(&self.state) = match result {
            Ok(()) => MapState::Mapped,
            Err(e) => MapState::Failed(e),
        };
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }
}

/// A tensor read that completes after its batch runs on the GPU.
pub struct PendingRead<T> {
    device: Device,
    slot: Option<Arc<ReadSlot>>,
    element: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for PendingRead<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingRead({} of {} bytes)", std::any::type_name::<T>(), self.slot.as_ref().map_or(0, |s| s.len))
    }
}

impl<T: bytemuck::Pod> PendingRead<T> {
    pub(crate) fn new(device: Device, slot: Arc<ReadSlot>) -> Self {
        Self { device, slot: Some(slot), element: PhantomData }
    }

    /// The values if the GPU has finished, without blocking.
    pub fn try_take(&mut self) -> Result<Option<Vec<T>>> {
        let _ = self.device.ctx().device.poll(wgpu::PollType::Poll);
        self.take_if_mapped()
    }

    /// Blocks until the values are available (submitting the batch if needed),
    /// through [`Device::block_on`]: in a page this is an error naming the fix.
    pub fn wait(self) -> Result<Vec<T>> {
        self.device.clone().block_on(self)
    }

    fn submit_if_recorded(&self) -> Result<()> {
        if self.slot.as_ref().is_some_and(|s| matches!(*lock(&s.state), MapState::Recorded)) {
            self.device.flush()?;
        }
        Ok(())
    }

    fn take_if_mapped(&mut self) -> Result<Option<Vec<T>>> {
        let Some(slot) = self.slot.as_ref() else {
            return Err(Error::Gpu("this read was already taken".into()));
        };
        // Inspected under one lock: the map callback may run on another
        // thread's poll at any moment, and must not be overwritten.
        match &*lock(&slot.state) {
            MapState::Mapped => {}
            MapState::Failed(msg) => return Err(Error::Gpu(format!("reading a tensor back: {msg}"))),
            MapState::Recorded | MapState::Submitted => return Ok(None),
        }
        let values = {
            let view =
                slot.buffer.get_mapped_range(..).map_err(|e| Error::Gpu(format!("reading a tensor back: {e}")))?;
            bytemuck::pod_collect_to_vec(&view[..slot.len as usize])
        };
        slot.buffer.unmap();
        let slot = self.slot.take().expect("checked above");
        if let Ok(slot) = Arc::try_unwrap(slot) {
            let class = slot.buffer.size();
            lock(&self.device.ctx().readback_pool).entry(class).or_default().push(slot.buffer);
        }
        Ok(Some(values))
    }
}

impl<T: bytemuck::Pod> Future for PendingRead<T> {
    type Output = Result<Vec<T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        if let Err(e) = self.submit_if_recorded() {
            return Poll::Ready(Err(e));
        }
        if let Some(slot) = &self.slot {
            *lock(&slot.waker) = Some(cx.waker().clone());
        }
        match self.try_take() {
            Ok(Some(values)) => Poll::Ready(Ok(values)),
            Err(e) => Poll::Ready(Err(e)),
            Ok(None) => {
                // Native wgpu only runs map callbacks inside `poll`, so ask to
                // be polled again; in the browser the callback wakes the task.
                if !cfg!(target_arch = "wasm32") {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }
}

impl Device {
    /// Runs the engine's async code (reads, and code that awaits them) to the
    /// end on this thread, for native callers: between polls it sleeps until
    /// the GPU has finished what was submitted instead of spinning. So one
    /// async path serves both native code and a page. A page cannot block
    /// (its GPU work completes only when it yields): there, work that is not
    /// done at once is an error naming the fix, like [`PendingRead::wait`].
    pub fn block_on<T, E: From<Error>>(
        &self,
        work: impl Future<Output = std::result::Result<T, E>>,
    ) -> std::result::Result<T, E> {
        let mut work = std::pin::pin!(work);
        let mut cx = TaskContext::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(out) = work.as_mut().poll(&mut cx) {
                return out;
            }
            if cfg!(target_arch = "wasm32") {
                return Err(Error::Gpu("blocking on GPU work in a page: await it instead".into()).into());
            }
            self.ctx().wait_idle()?;
        }
    }
}
