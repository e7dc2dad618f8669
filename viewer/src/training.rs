//! The viewer's own training run, paused and resumed from the UI. On a
//! desktop (`--train`) it is `cmae pretrain` on a thread of its own, and the
//! viewer follows its run directory. In a page it is a [`Session`] stepped
//! by a task of the page's event loop (no threads, no files): it hands its
//! metrics and, now and then, its weights to the UI directly, and the
//! weights can be downloaded as the same file `cmae pretrain` writes.
//!
//! [`Session`]: cmae::train::pretrain::Session

use cmae::config::PretrainConfig;
use cmae::train::metrics::MetricsLine;

use crate::worker::Source;

/// What a run produced since the UI last looked.
#[derive(Default)]
pub struct News {
    pub metrics: Vec<MetricsLine>,
    /// New weights to show (a page's run; a desktop run's come through its directory).
    pub checkpoint: Option<Source>,
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::Training;
#[cfg(target_arch = "wasm32")]
pub use page::Training;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;

    use super::{News, PretrainConfig};

    /// A background thread that can be paused (it checkpoints and stops) and
    /// resumed (exactly, from the checkpoint).
    pub struct Training {
        pub config: PretrainConfig,
        pub out: PathBuf,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<anyhow::Result<cmae::train::runner::Summary>>>,
        device: cmae_engine::Device,
        pub paused: bool,
        pub finished: bool,
        pub error: Option<String>,
    }

    impl Training {
        /// Starts training `config` into `out` (resuming what is there).
        pub fn start(config: PretrainConfig, out: PathBuf, device: cmae_engine::Device) -> Self {
            let stop = Arc::new(AtomicBool::new(false));
            let mut t = Self { config, out, stop, thread: None, device, paused: false, finished: false, error: None };
            t.resume();
            t
        }

        /// Where the run writes, for the UI.
        pub fn place(&self) -> String {
            self.out.display().to_string()
        }

        pub fn running(&self) -> bool {
            self.thread.is_some()
        }

        pub fn resume(&mut self) {
            self.stop.store(false, Ordering::SeqCst);
            // A stream of its own: a training step is never flushed or waited on
            // by the model worker's reconstructions, nor the other way round.
            let (dev, cfg, stop) = (self.device.new_stream(), self.config.clone(), self.stop.clone());
            let resume = cmae::train::checkpoint::latest(&self.out).ok().flatten().is_some();
            let opts = cmae::train::runner::RunFlags { out: self.out.clone(), resume, quiet: true, stop_at: None };
            self.thread = Some(std::thread::spawn(move || cmae::train::pretrain::pretrain(&dev, &cfg, &opts, &stop)));
            self.paused = false;
        }

        /// Asks the thread to checkpoint and stop; `poll` sees it end.
        pub fn pause(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            self.paused = true;
        }

        /// Notes how the thread ended, once it has. Its metrics and weights
        /// reach the UI through the run directory.
        pub fn poll(&mut self) -> News {
            if self.thread.as_ref().is_some_and(|h| h.is_finished()) {
                self.join();
            }
            News::default()
        }

        /// Weights held in memory to download: none, a desktop run keeps
        /// its checkpoints in `out`.
        pub fn latest(&self) -> Option<(u64, Vec<u8>)> {
            None
        }

        /// Stops at a checkpoint and waits for it to be written.
        pub fn stop_and_wait(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            self.join();
        }

        fn join(&mut self) {
            match self.thread.take().map(JoinHandle::join) {
                Some(Ok(Ok(summary))) => self.finished = !summary.interrupted,
                Some(Ok(Err(e))) => self.error = Some(format!("training stopped: {e:#}")),
                Some(Err(_)) => self.error = Some("the training thread panicked".into()),
                None => {}
            }
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod page {
    use std::cell::RefCell;
    use std::rc::Rc;

    use cmae::train::pretrain::Session;
    use cmae_engine::Device;

    use super::{MetricsLine, News, PretrainConfig, Source};

    /// What the stepping task and the UI share.
    struct Shared {
        /// The run, lent to the stepping task while it runs.
        session: Option<Session>,
        stop: bool,
        metrics: Vec<MetricsLine>,
        /// Weights not yet shown, and the newest weights with their step.
        fresh: Option<Source>,
        latest: Option<(u64, Vec<u8>)>,
        finished: bool,
        error: Option<String>,
    }

    /// A run stepped by a task of the page: pausing stops it after the
    /// current step, with its state in memory, so resuming continues exactly.
    pub struct Training {
        pub config: PretrainConfig,
        pub paused: bool,
        pub finished: bool,
        pub error: Option<String>,
        shared: Rc<RefCell<Shared>>,
        device: Device,
        wake: Rc<dyn Fn()>,
        /// The page's clock in seconds (`performance.now()`).
        clock: Rc<dyn Fn() -> f64>,
    }

    impl Training {
        /// Starts a fresh run of `config` on `device`; `wake` repaints the UI.
        pub fn start(
            config: PretrainConfig,
            device: Device,
            wake: impl Fn() + 'static,
            clock: impl Fn() -> f64 + 'static,
        ) -> anyhow::Result<Self> {
            // A stream of its own, as on the desktop.
            let device = device.new_stream();
            let session = Session::new(&device, &config)?;
            let shared = Shared {
                session: Some(session),
                stop: false,
                metrics: Vec::new(),
                fresh: None,
                latest: None,
                finished: false,
                error: None,
            };
            let mut t = Self {
                config,
                paused: false,
                finished: false,
                error: None,
                shared: Rc::new(RefCell::new(shared)),
                device,
                wake: Rc::new(wake),
                clock: Rc::new(clock),
            };
            t.resume();
            Ok(t)
        }

        pub fn place(&self) -> String {
            "this page (nothing is written until you download)".into()
        }

        pub fn running(&self) -> bool {
            self.shared.borrow().session.is_none()
        }

        pub fn resume(&mut self) {
            let Some(mut session) = self.shared.borrow_mut().session.take() else { return };
            self.shared.borrow_mut().stop = false;
            self.paused = false;
            let (shared, dev, wake, clock) =
                (self.shared.clone(), self.device.clone(), self.wake.clone(), self.clock.clone());
            let every = (self.config.output.recon_every as u64).max(1);
            wasm_bindgen_futures::spawn_local(async move {
                let outcome = async {
                    while session.step() < session.total_steps() {
                        // The next step goes to the GPU before this one's loss
                        // is awaited, except before weights are published or
                        // the run pauses: those need the weights of this step.
                        let stop = shared.borrow().stop;
                        if stop && !session.is_ahead() {
                            break;
                        }
                        let settling = session.step() + 1;
                        let record_next = !stop && !settling.is_multiple_of(every) && settling < session.total_steps();
                        let line = session.advance(&dev, &*clock, record_next).await?;
                        shared.borrow_mut().metrics.push(line);
                        let done = session.step() == session.total_steps();
                        let publish_now = done || session.step().is_multiple_of(every) || shared.borrow().stop;
                        if publish_now && !session.is_ahead() {
                            publish(&shared, &session, &dev).await?;
                        }
                        wake();
                    }
                    anyhow::Ok(())
                }
                .await;
                let mut s = shared.borrow_mut();
                match outcome {
                    Ok(()) => s.finished = session.step() == session.total_steps(),
                    Err(e) => s.error = Some(format!("training stopped: {e:#}")),
                }
                s.session = Some(session);
                drop(s);
                wake();
            });
        }

        /// Stops after the current step (its weights are published then).
        pub fn pause(&mut self) {
            self.shared.borrow_mut().stop = true;
            self.paused = true;
        }

        pub fn poll(&mut self) -> News {
            let mut s = self.shared.borrow_mut();
            self.finished = s.finished;
            if let Some(e) = s.error.take() {
                self.error = Some(e);
            }
            News { metrics: std::mem::take(&mut s.metrics), checkpoint: s.fresh.take() }
        }

        /// The newest weights as `cmae pretrain` writes them, and their step.
        pub fn latest(&self) -> Option<(u64, Vec<u8>)> {
            self.shared.borrow().latest.clone()
        }
    }

    /// Reads the weights back and hands them to the UI.
    async fn publish(shared: &Rc<RefCell<Shared>>, session: &Session, dev: &Device) -> anyhow::Result<()> {
        let bytes = session.checkpoint(dev).await?;
        let mut s = shared.borrow_mut();
        let name = format!("cmae-page-step-{:08}.safetensors", session.step());
        s.fresh = Some(Source::Bytes { name, bytes: bytes.clone().into() });
        s.latest = Some((session.step(), bytes));
        Ok(())
    }
}
